"""Chaos: 10 % create failures, 5 % env crashes, 2 % hangs, a worker SIGKILLed every few
seconds, then the driver SIGKILLed once and the run resumed → 0 rollout keys lost, 0
duplicated, 0 sandboxes left in the sim provider or the governor's ledger, and every
failure in its right class (checked against the sim's own seeded draws)."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid

import psutil
import pytest

from hud_ray.results import read_manifest, read_results
from providers import get_provider, sandbox_name
from providers.sim import sim_stats

from .conftest import cli, kill_tree, wait_for

N = 500
MAX_ATTEMPTS = 3


def _worker_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any("RolloutWorkerImpl" in part for part in proc.info["cmdline"] or []):
                pids.append(proc.pid)
        except (psutil.Error, TypeError):
            continue
    return pids


def _killer(stop: threading.Event, every_s: float, killed: list[int]) -> None:
    while not stop.wait(every_s):
        pids = _worker_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])


@pytest.mark.slow
def test_chaos_then_driver_sigkill_and_resume(ray_local, tmp_path):
    from hud_ray.governor import NAMESPACE, governor_name

    account = f"chaos-{uuid.uuid4().hex[:6]}"
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(N)))
    sim_opts = {"account": account, "seed": "7", "create_fail_rate": "0.1",
                "crash_rate": "0.05", "hang_rate": "0.02", "duration_s": "1.0",
                "cold_start_s": "0.05",
                # The sim's books must survive SIGKILL of the worker holding them: unbuffered.
                "flush_s": "0"}
    args = ["run", str(tasks), "--agent", "nop", "--provider", "sim", "--concurrency", "32",
            "--workers", "4", "--out", str(tmp_path / "runs"), "--run-id", "chaos",
            "--timeout", "3", "--max-attempts", str(MAX_ATTEMPTS), "--warm", "0",
            "--no-progress", "--governor-opt", "run_lease_s=6",
            "--governor-opt", "reap_interval_s=0.5", "--governor-opt", "deadline_grace_s=5",
            # a grant whose worker was killed before its create leaves the ledger after this
            "--governor-opt", "create_grace_s=10"]
    for key, value in sim_opts.items():
        args += ["--provider-opt", f"{key}={value}"]
    env = {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "HUD_RAY_STATE_DIR": os.environ["HUD_RAY_STATE_DIR"]}
    run_dir = tmp_path / "runs" / "chaos"

    def written() -> int:
        try:
            return sum(read_manifest(run_dir).get("counts", {}).values())
        except Exception:
            return 0

    stop, killed = threading.Event(), []
    driver = cli(*args, env=env)
    killer = threading.Thread(target=_killer, args=(stop, 1.5, killed), daemon=True)
    try:
        wait_for(lambda: written() >= 30, 300, "the first rows")
        killer.start()
        wait_for(lambda: len(killed) >= 3, 120, "three workers killed")
        wait_for(lambda: written() >= N * 0.4, 600, "40 % of the run")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        stop.set()
        kill_tree(driver)
    resumed = cli(*args, "--resume", env=env)
    try:
        _, stderr = resumed.communicate(timeout=900)
    finally:
        kill_tree(resumed)
    assert resumed.returncode == 0, stderr[-4000:]

    rows = read_results(run_dir).to_pylist()
    keys = [r["rollout_key"] for r in rows]
    assert len(keys) == N and len(set(keys)) == N, "0 lost, 0 duplicated"
    sim = get_provider("sim", **sim_opts)
    for row in rows:
        fate = sim.fate(sandbox_name("chaos", row["rollout_key"], row["attempts"]))
        broken = fate.create_fail or fate.crash
        if row["status"] == "ok":
            assert not (broken or fate.hang), row
        elif row["status"] == "timeout":
            assert fate.hang and row["timeout_phase"] == "grade", row
        elif row["status"] == "infra_error":
            assert row["attempts"] == MAX_ATTEMPTS, row
            assert broken or row["error_type"] == "WorkerDied", (row, fate)
        else:
            raise AssertionError(f"unexpected status: {row}")
    statuses = {r["status"] for r in rows}
    assert {"ok", "timeout"} <= statuses
    assert any(r["attempts"] > 1 and r["status"] == "ok" for r in rows), "retries happened"
    governor = ray_local.get_actor(governor_name("sim", account), namespace=NAMESPACE)
    wait_for(lambda: sim_stats(account)["live"] == 0, 120, "0 sandboxes left in the sim")
    try:
        wait_for(lambda: not ray_local.get(governor.entries.remote("chaos")), 60,
                 "an empty ledger")
    except AssertionError as exc:
        left = ray_local.get(governor.entries.remote("chaos"))
        raise AssertionError(f"{exc}: {len(left)} entries, e.g. {left[:3]}") from None
