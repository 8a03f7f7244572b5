"""Run with the ART venv's python (openpipe-art installed): read hud_ray groups (JSON
lines written by the test), map them with hud_ray.rl.adapters.art, and answer what ART's
own classes make of them, as one JSON line."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    import art
    from art.pipeline_trainer.trainer import PipelineTrainer

    from hud_ray.rl.adapters.art import to_trajectory_group
    from hud_ray.rl.groups import Group

    out = []
    with open(path) as fh:
        for line in fh:
            data = json.loads(line)
            group = Group.model_validate(data["group"])
            for member, row in zip(group.members, data["rows"], strict=True):
                member.row = row
            tg = to_trajectory_group(group)
            assert isinstance(tg, art.TrajectoryGroup)
            again = art.TrajectoryGroup.model_validate_json(tg.model_dump_json())
            out.append({
                "group_id": tg.metadata["group_id"],
                "rewards": [t.reward for t in again.trajectories],
                "initial": PipelineTrainer._group_initial_version(None, again),
                "zero_variance": PipelineTrainer._group_zero_variance(again),
                "exceptions": [e.type for e in again.exceptions],
                "roles": [[m["role"] if isinstance(m, dict) else "choice"
                           for m in t.messages_and_choices] for t in again.trajectories],
                "final": [t.final_policy_version for t in again.trajectories],
            })
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
