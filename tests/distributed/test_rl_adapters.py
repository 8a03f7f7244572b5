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
VF_PYTHON = REPO / ".venv-verifiers" / "bin" / "python"


def _check(python, script: str, path) -> list[dict]:
    """Run a check script in a trainer's own venv; its last stdout line is JSON."""
    if not python.exists():
        pytest.fail(f"{python} is missing: `make art-venv vf-venv` installs the trainers")
    done = subprocess.run([str(python), script, str(path)], cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_groups_map_onto_art_and_verifiers_own_classes(ray_local, tmp_path):
    """One rollout source's groups, read by ART (TrajectoryGroup, PipelineTrainer's own
    staleness and zero-variance helpers) and by verifiers (Episode over the wire)."""
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
    seen = {g["group_id"]: g for g in _check(ART_PYTHON, "tests/rl/art_check.py", path)}
    assert seen[zeroed]["rewards"] == [1.0, 1.0, 0.0] and seen[zeroed]["exceptions"] == []
    assert seen[dropped]["rewards"] == [1.0, 1.0]
    assert seen[dropped]["exceptions"] == ["DroppedMember"]
    assert seen[dropped]["zero_variance"] and not seen[zeroed]["zero_variance"]
    assert seen[zeroed]["initial"] == 3 and seen[zeroed]["final"] == [3, 3, 3]
    # the member whose policy failed has no answer: its conversation is the prompt alone
    assert seen[zeroed]["roles"] == [["user", "assistant"]] * 2 + [["user"]]
    episodes = _check(VF_PYTHON, "tests/rl/vf_check.py", path)
    by_key = {e["key"]: e for e in episodes}
    assert len(episodes) == 5 and {e["group"] for e in episodes} == {zeroed, dropped}
    failed = by_key[f"{zeroed}.z#2"]
    assert not failed["ok"] and failed["errors"] == ["agent_error"] and failed["reward"] == 0.0
    assert all(e["span"] == [3, 3] and e["drift"] == 0 for e in episodes)
    assert sorted(e["reward"] for e in episodes if e["group"] == dropped) == [1.0, 1.0]
