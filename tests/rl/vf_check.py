"""Run with the verifiers venv's python: read hud_ray groups (JSON lines written by the
test), map them with hud_ray.rl.adapters.verifiers, and answer what verifiers' own
`Episode` makes of them (after a JSON round trip, as over the wire), as one JSON line."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    from verifiers.v1.episode import Episode

    from hud_ray.rl.adapters.verifiers import to_episodes
    from hud_ray.rl.groups import Group

    out = []
    with open(path) as fh:
        for line in fh:
            data = json.loads(line)
            group = Group.model_validate(data["group"])
            for member, row in zip(group.members, data["rows"], strict=True):
                member.row = row
            for episode in to_episodes(group, run_id="r1"):
                again = Episode.model_validate_json(episode.model_dump_json())
                trace = again.traces[0]
                out.append({"group": again.group.id, "ok": again.ok,
                            "reward": trace.rewards["reward"].score,
                            "span": [again.run.work.policy.start, again.run.work.policy.end],
                            "drift": again.run.work.policy.drift,
                            "errors": [e.type for e in again.errors],
                            "key": again.task.key})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
