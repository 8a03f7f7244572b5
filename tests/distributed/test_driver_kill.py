"""Issue 16's fault script: kill -9 the driver mid-run, `--resume` with no manual reap.

The killed driver's private Ray (and the governor ledger in it) dies with it; the env
servers it started live on. The resumed driver must find them through the provider's own
records (local: the on-disk ledger) and destroy them, then finish every rollout once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hud_ray.results import read_manifest

from .conftest import REPO, cli, env_server_pids, kill_tree, wait_for

DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"
SLOW_AGENT = f"{REPO / 'tests/fakes/agents.py'}:slow_rule_agent"


def _killed_then_resumed(tmp_path: Path, corrupt_a_part: bool = False) -> tuple[Path, Path]:
    """300 local rollouts at concurrency 16; SIGKILL mid-run; resume. (state dir, run dir)"""
    state, out = tmp_path / "state", tmp_path / "runs"
    tasks = tmp_path / "tasks150.jsonl"
    tasks.write_text("\n".join(DEMO_TASKS.read_text().splitlines()[:150]) + "\n")
    env = {"HUD_RAY_STATE_DIR": str(state)}
    args = ["run", str(tasks), "--agent", SLOW_AGENT, "--repeats", "2", "--concurrency", "16",
            "--out", str(out), "--run-id", "fault", "--no-progress",
            "--provider-opt", f"env_file={REPO / 'examples/demo/env.py'}"]
    run_dir = out / "fault"
    driver = cli(*args, env=env)
    try:
        def two_parts() -> bool:
            if driver.poll() is not None:
                raise AssertionError(f"driver exited early: {driver.stderr.read()[-3000:]}")
            return len(list((run_dir / "rollouts").glob("part-*.parquet"))) >= 2

        wait_for(two_parts, 180, "two Parquet parts")
        wait_for(lambda: len(env_server_pids(state)) >= 8, 60, "env servers in flight")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        kill_tree(driver)
    assert env_server_pids(state), "the kill left no env server: the test proves nothing"
    if corrupt_a_part:
        victim = sorted((run_dir / "rollouts").glob("part-*.parquet"))[0]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    resumed = cli(*args, "--resume", env=env)
    try:
        _, stderr = resumed.communicate(timeout=600)
    finally:
        kill_tree(resumed)
    assert resumed.returncode == 0, stderr[-3000:]
    return state, run_dir


def _assert_clean(state: Path, run_dir: Path) -> None:
    keys = pq.read_table(run_dir / "rollouts").column("rollout_key").to_pylist()
    assert len(keys) == 300 and len(set(keys)) == 300, (len(keys), len(set(keys)))
    assert sum(read_manifest(run_dir)["counts"].values()) == 300
    wait_for(lambda: not env_server_pids(state), 30, "every env server to be gone")
    ledger = list((state / "local").glob("*.json")) if (state / "local").is_dir() else []
    assert ledger == [], f"ledger entries left: {[p.name for p in ledger]}"


@pytest.mark.slow
def test_sigkill_then_resume_leaves_nothing_behind(tmp_path):
    state, run_dir = _killed_then_resumed(tmp_path)
    _assert_clean(state, run_dir)
