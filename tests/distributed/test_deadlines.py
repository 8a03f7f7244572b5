"""Deadlines enforced from outside the worker: a blocked event loop cannot hold a run."""

from __future__ import annotations

import json
import time

from hud_ray.api import run_distributed

from .conftest import REPO

DEMO = REPO / "examples" / "demo"
BLOCKING = f"{REPO / 'tests/fakes/agents.py'}:blocking_agent"


def test_blocked_worker_loop_ends_as_timeout_and_run_completes(ray_local, tmp_path):
    rows = [json.loads(line) for line in (DEMO / "tasks.jsonl").read_text().splitlines()]
    riddles = [r for r in rows if r["id"] == "riddle"][:2]
    others = [r for r in rows if r["id"] != "riddle"][:14]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps(r) for r in others[:6] + riddles + others[6:]) + "\n")
    deadline, teardown, grace = 3.0, 2.0, 2.0
    t0 = time.monotonic()
    table = run_distributed(tasks, BLOCKING, provider="local", concurrency=4, workers=2,
                            out=tmp_path / "runs", progress=False, timeout_s=deadline,
                            teardown_timeout_s=teardown, deadline_grace_s=grace,
                            retry_backoff_s=0.1, env_file=str(DEMO / "env.py"))
    elapsed = time.monotonic() - t0
    by_key = {r["rollout_key"]: r for r in table.to_pylist()}
    assert len(by_key) == table.num_rows == 16
    for row in by_key.values():
        if row["template_id"] == "riddle":
            assert row["status"] == "timeout", row
            assert row["timeout_phase"] and row["error_type"] == "DeadlineExceeded"
            assert row["total_s"] < deadline + teardown + grace + 3.0
        else:
            assert row["status"] in ("ok", "timeout"), row
    assert sum(r["status"] == "ok" for r in by_key.values()) >= 8
    assert elapsed < 90


SLEEPY = f"{REPO / 'tests/fakes/agents.py'}:sleepy_rule_agent"


def test_a_blocking_agent_is_the_one_timeout_and_its_neighbours_are_retried(ray_local, tmp_path):
    """Issue 20 item 4: one rollout blocks its worker's loop (a sync sleep in the agent).
    Only it is the `timeout`, in phase agent, found within deadline + 10 s; the rollouts
    that shared its worker are infra_error and retried (they all ended `timeout`, phase
    provision, after 80 s)."""
    rows = [json.loads(line) for line in (DEMO / "tasks.jsonl").read_text().splitlines()]
    riddle = next(r for r in rows if r["id"] == "riddle")
    others = [r for r in rows if r["id"] in ("count", "arith")][:2]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps(r) for r in [others[0], riddle, others[1]]) + "\n")
    deadline = 5.0
    table = run_distributed(tasks, BLOCKING, provider="local", concurrency=3, workers=1,
                            out=tmp_path / "runs", progress=False, timeout_s=deadline,
                            retry_backoff_s=0.1, warm=0, env_file=str(DEMO / "env.py"))
    by_template = {r["template_id"]: r for r in table.to_pylist()}
    assert len(by_template) == 3
    stuck = by_template.pop("riddle")
    assert (stuck["status"], stuck["timeout_phase"]) == ("timeout", "agent"), stuck
    assert stuck["total_s"] < deadline + 10, stuck
    for row in by_template.values():
        assert row["status"] == "ok", row


def test_waiting_for_the_live_cap_is_not_charged_to_the_deadline(ray_local, tmp_path):
    """Issue 20 item 5: 6 rollouts of 4 s under a live cap of 2 with a 6 s deadline: the
    wait for a grant is its own phase (throttle_s), never a timeout (4 of 6 were)."""
    import uuid

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(6)))
    table = run_distributed(tasks, "nop", provider="sim", concurrency=6, workers=1,
                            out=tmp_path / "runs", progress=False, timeout_s=6.0,
                            governor={"live_cap": 2}, warm=0,
                            account=f"cap-{uuid.uuid4().hex[:6]}", duration_s=4.0)
    rows = table.to_pylist()
    assert {(r["status"], r["attempts"]) for r in rows} == {("ok", 1)}, rows
    waited = sorted(r["throttle_s"] or 0.0 for r in rows)
    assert waited[-1] > 3.0, waited  # the last wave waited for two others to end
