"""Run incarnations (issue 20): each driver start of a run id is its own incarnation, so
"finished" and "orphan" never reach across starts, and two drivers never share a run dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from hud_ray.results import read_manifest

from .conftest import REPO, cli, kill_tree, wait_for

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


def _sim_tasks(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                            for i in range(n)))
    return path


def _dual_args(tasks: Path, out: Path) -> list[str]:
    return ["run", str(tasks), "--agent", "nop", "--provider", "sim",
            "--provider-opt", "duration_s=0.05", "--concurrency", "8", "--out", str(out),
            "--run-id", "dual", "--no-progress"]


def _keys_on_disk(run_dir: Path) -> list[str]:
    """Every row in every part, read without hud_ray (no de-duplication)."""
    return pq.read_table(run_dir / "rollouts").column("rollout_key").to_pylist()


def _ray_env(ray_local) -> dict[str, str]:
    return {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
            "HUD_RAY_STATE_DIR": os.environ["HUD_RAY_STATE_DIR"]}


def test_two_drivers_on_one_run_id_at_once(ray_local, tmp_path):
    """Both started together: one writes the run, the other is refused in one line; every
    key lands exactly once and the manifest counts what is on disk (it was 312 rows for
    300 keys, both drivers exiting 0)."""
    tasks, out = _sim_tasks(tmp_path / "sim300.jsonl", 300), tmp_path / "D"
    drivers = [cli(*_dual_args(tasks, out), env=_ray_env(ray_local)) for _ in range(2)]
    try:
        results = [(p.returncode, err) for p in drivers for _, err in [p.communicate(timeout=300)]]
    finally:
        for proc in drivers:
            kill_tree(proc)
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] == 2, results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) <= 2 and refused[-1].startswith("hud-ray: error: "), refused
    assert ("being written by another driver" in refused[-1]
            or "already holds results" in refused[-1]), refused
    keys = _keys_on_disk(out / "dual")
    assert len(keys) == 300 and len(set(keys)) == 300
    assert sum(read_manifest(out / "dual")["counts"].values()) == 300


def test_a_resume_while_the_run_is_written_is_refused(ray_local, tmp_path):
    """A second `--resume` of a live run is refused naming the live driver; the first
    finishes alone."""
    tasks, out = _sim_tasks(tmp_path / "sim300.jsonl", 300), tmp_path / "D"
    args = _dual_args(tasks, out)
    args[args.index("duration_s=0.05")] = "duration_s=0.2"  # still going when B starts
    first = cli(*args, env=_ray_env(ray_local))
    try:
        wait_for(lambda: list((out / "dual" / "rollouts").glob("part-*.parquet")), 120,
                 "the first driver's first part")
        second = cli(*args, "--resume", env=_ray_env(ray_local))
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err[-3000:]
        line = err.strip().splitlines()[-1]
        assert line.startswith("hud-ray: error: ") and f"pid {first.pid} " in line, line
        assert first.poll() is None, "the refusal came after the first driver finished"
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
    finally:
        kill_tree(first)
    keys = _keys_on_disk(out / "dual")
    assert len(keys) == 300 and len(set(keys)) == 300
    assert sum(read_manifest(out / "dual")["counts"].values()) == 300
