"""Failure classification end to end: an OOM-killed env is infra (retried, then
infra_error), an agent that always fails is agent_error (never retried), and an error
budget stops a run that is failing everywhere, keeping what was written."""

from __future__ import annotations

import json
import uuid

from hud_ray.api import run_distributed
from hud_ray.results import read_manifest, read_results

from .conftest import REPO, cli

RAISING = f"{REPO / 'tests/fakes/agents.py'}:raising_agent"


def _tasks(tmp_path, n: int, template: str = "work"):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"env": "oom", "id": template, "args": {"i": i}}) + "\n"
                            for i in range(n)))
    return path


def test_oom_killed_env_is_infra_error_after_retries(ray_local, tmp_path):
    table = run_distributed(_tasks(tmp_path, 4), "nop", provider="local", concurrency=4,
                            workers=1, out=tmp_path / "runs", progress=False,
                            max_attempts=2, retry_backoff_s=0.05,
                            env_file=str(REPO / "tests/fakes/envs/oom_killed.py"))
    for row in table.to_pylist():
        assert row["status"] == "infra_error", row
        assert row["attempts"] == 2 and row["error_type"] == "TransportError", row
        assert row["reward"] is None


def test_agent_errors_are_not_retried_and_the_budget_stops_the_run(ray_local, tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(400)))
    driver = cli("run", str(tasks), "--agent", RAISING, "--provider", "sim",
                 "--concurrency", "4", "--out", str(tmp_path / "runs"), "--run-id", "b",
                 "--max-failures", "10", "--no-progress")
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 1, stderr[-2000:]
    assert "run stopped: error budget exceeded" in stderr and "--max-failures 10" in stderr
    rows = read_results(tmp_path / "runs" / "b").to_pylist()
    assert 11 <= len(rows) < 400  # stopped early, nothing written was lost
    assert all(r["status"] == "agent_error" and r["attempts"] == 1 for r in rows)
    manifest = read_manifest(tmp_path / "runs" / "b")
    assert manifest["state"] == "aborted" and "error budget" in manifest["error"]


def test_an_interrupt_never_writes_a_retryable_row_as_final(ray_local, tmp_path):
    """Issue 20, suspected: rows a worker held at Ctrl-C were written whatever they were;
    an infra_error with attempts left, written, is skipped by the resume as done."""
    import pytest

    from hud_ray.api import plan_run

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(400)))
    plan = plan_run(tasks, "nop", provider="sim", concurrency=32, workers=2, max_attempts=3,
                    out=tmp_path / "runs", progress=False, retry_backoff_s=0.05, warm=0,
                    flush_rows=1, account=f"intr-{uuid.uuid4().hex[:6]}",
                    ready_fail_rate=0.5, seed=7)
    stream = plan.stream()
    next(stream)
    with pytest.raises(KeyboardInterrupt):
        stream.throw(KeyboardInterrupt)
    rows = read_results(plan.run_dir).to_pylist()
    early = [r for r in rows if r["status"] in ("infra_error", "quota_error")
             and r["attempts"] < 3]
    assert early == [], early[:3]
