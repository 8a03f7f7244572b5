"""Run incarnations (issue 20): each driver start of a run id is its own incarnation, so
"finished" and "orphan" never reach across starts, and two drivers never share a run dir."""

from __future__ import annotations

from .conftest import REPO

DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"
SLEEPY = f"{REPO / 'tests/fakes/agents.py'}:sleepy_rule_agent"
ENV = {"env_file": str(REPO / "examples/demo/env.py")}


def test_same_run_id_twice_in_one_session(ray_local, tmp_path):
    """A notebook re-running a cell: the second start of the run id must not be reaped as
    the first one's leftovers (it was: 0/6 ok, infra_error after 3 attempts)."""
    from hud_ray.api import run_distributed

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(DEMO_TASKS.read_text().splitlines()[:6]) + "\n")
    for out in ("A", "B"):
        table = run_distributed(tasks, SLEEPY, provider="local", concurrency=6, workers=1,
                                run_id="same-id", out=tmp_path / out, progress=False,
                                warm=0, **ENV)
        rows = table.to_pylist()
        assert len(rows) == 6, out
        assert {(r["status"], r["attempts"]) for r in rows} == {("ok", 1)}, (out, rows)
