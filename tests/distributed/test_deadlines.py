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
