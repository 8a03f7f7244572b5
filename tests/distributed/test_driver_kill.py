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


def _killed_then_resumed(tmp_path: Path,
                         corrupt_a_part: bool = False) -> tuple[Path, Path, str]:
    """300 local rollouts at concurrency 16; SIGKILL mid-run; resume.
    (state dir, run dir, the resume's stderr)"""
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
    return state, run_dir, stderr


def _assert_clean(state: Path, run_dir: Path) -> None:
    keys = pq.read_table(run_dir / "rollouts").column("rollout_key").to_pylist()
    assert len(keys) == 300 and len(set(keys)) == 300, (len(keys), len(set(keys)))
    assert sum(read_manifest(run_dir)["counts"].values()) == 300
    wait_for(lambda: not env_server_pids(state), 30, "every env server to be gone")
    ledger = list((state / "local").glob("*.json")) if (state / "local").is_dir() else []
    assert ledger == [], f"ledger entries left: {[p.name for p in ledger]}"


@pytest.mark.slow
def test_sigkill_then_resume_leaves_nothing_behind(tmp_path):
    state, run_dir, _ = _killed_then_resumed(tmp_path)
    _assert_clean(state, run_dir)


@pytest.mark.slow
def test_sigkill_corrupt_part_then_resume_reruns_its_rollouts(tmp_path):
    """The same, with one part truncated before the resume: it is moved aside (named in
    one line), its rollouts run again, and `report` reads the rest."""
    state, run_dir, stderr = _killed_then_resumed(tmp_path, corrupt_a_part=True)
    _assert_clean(state, run_dir)
    quarantined = list((run_dir / "quarantine").glob("part-*.parquet"))
    assert len(quarantined) == 1
    named = [line for line in stderr.splitlines() if "quarantined unreadable part" in line]
    assert len(named) == 1 and quarantined[0].name in named[0], stderr[-3000:]
    assert read_manifest(run_dir)["quarantined"] == [str(quarantined[0])]
    report = cli("report", str(run_dir))
    stdout, stderr = report.communicate(timeout=120)
    assert report.returncode == 0 and "rollouts: 300 " in stdout, stderr
