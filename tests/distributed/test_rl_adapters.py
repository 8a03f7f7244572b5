"""Adapters onto real trainers, checked with the trainers' own classes: groups from a
rollout source on Ray workers, mapped in the trainer's own venv."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from hud_ray.rl import RolloutSource
from tests.distributed.conftest import REPO

ART_PYTHON = REPO / ".venv-art" / "bin" / "python"


@pytest.mark.slow
def test_groups_become_art_trajectory_groups_that_arts_trainer_reads(ray_local, tmp_path):
    if not ART_PYTHON.exists():
        pytest.fail(f"{ART_PYTHON} is missing: `make art-venv` installs openpipe-art there")
    account = f"rl-{uuid.uuid4().hex[:6]}"
    source = RolloutSource("tests/fakes/rl_agents.py:failing_member_agent", provider="sim",
                           out=tmp_path / "runs", concurrency=8,
                           provider_options={"account": account, "flush_s": "0"})
    task = {"env": "sim", "id": "t", "args": {"answer": "a", "fail_index": 2},
            "prompt": "say a"}
    source.set_policy(3)
    zeroed = source.submit({**task, "slug": "z"}, n=3, rule={"on_agent_error": "zero_reward"})
    dropped = source.submit({**task, "slug": "d"}, n=3,
                            rule={"on_agent_error": "drop_member", "min_ok": 2})
    source.close()
    lines = []
    for group in source:
        rows = [json.loads(json.dumps(m.row, default=str)) for m in group.members]
        lines.append(json.dumps({"group": group.model_dump(mode="json"), "rows": rows}))
    path = tmp_path / "groups.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run([str(ART_PYTHON), "tests/rl/art_check.py", str(path)], cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = {g["group_id"]: g for g in json.loads(done.stdout.strip().splitlines()[-1])}
    assert seen[zeroed]["rewards"] == [1.0, 1.0, 0.0] and seen[zeroed]["exceptions"] == []
    assert seen[dropped]["rewards"] == [1.0, 1.0]
    assert seen[dropped]["exceptions"] == ["DroppedMember"]
    assert seen[dropped]["zero_variance"] and not seen[zeroed]["zero_variance"]
    assert seen[zeroed]["initial"] == 3 and seen[zeroed]["final"] == [3, 3, 3]
    # the member whose policy failed has no answer: its conversation is the prompt alone
    assert seen[zeroed]["roles"] == [["user", "assistant"]] * 2 + [["user"]]
