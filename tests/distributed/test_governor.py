"""The cluster-wide governor: shared quota across drivers, ledger and reaper."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

from providers.sim import sim_events, sim_stats
from providers.sim.ledger import live_sandboxes

from .conftest import cli, kill_tree, wait_for


def _sim_tasks(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                            for i in range(n)))
    return path


def _ray_env(ray_local) -> dict[str, str]:
    return {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
            "HUD_RAY_STATE_DIR": os.environ["HUD_RAY_STATE_DIR"]}


def _leftovers(account: str, governor) -> str:
    """What a failing reaper test left behind: the live sandboxes and the ledger."""
    import ray

    events = sim_events(account)
    live = live_sandboxes(events)
    stats = ray.get(governor.stats.remote())
    return (f"{len(live)} live, e.g. {list(live.values())[:3]}; governor {stats}; "
            f"ledger {ray.get(governor.entries.remote())[:3]}")


def test_two_drivers_share_one_account_quota(ray_local, tmp_path):
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rate, cap = 20.0, 6
    drivers = []
    for name in ("a", "b"):
        tasks = _sim_tasks(tmp_path / f"{name}.jsonl", 60)
        drivers.append(cli(
            "run", str(tasks), "--agent", "nop", "--provider", "sim",
            "--provider-opt", f"account={account}", "--provider-opt", "duration_s=0.2",
            "--concurrency", "8", "--out", str(tmp_path / "runs"), "--run-id", name,
            "--create-rate", str(rate), "--live-cap", str(cap), "--no-progress",
            "--warm", "0",  # one create per rollout, so the books below add up exactly
            env=_ray_env(ray_local)))
    try:
        for proc in drivers:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-3000:]
    finally:
        for proc in drivers:
            kill_tree(proc)
    stats = sim_stats(account)
    assert stats["creates"] == 120
    assert stats["live"] == 0
    assert stats["peak_live"] <= cap, stats
    # a 0.1 s bucket: creates in any 1 s window stay within rate + burst
    assert stats["max_creates_per_s"] <= rate * 1.1 + 1, stats


def test_reaper_cleans_up_after_driver_sigkill(ray_local, tmp_path):
    import ray

    from hud_ray.governor import NAMESPACE, governor_name

    account = f"acct-{uuid.uuid4().hex[:6]}"
    tasks = _sim_tasks(tmp_path / "t.jsonl", 400)
    driver = cli(
        "run", str(tasks), "--agent", "nop", "--provider", "sim",
        "--provider-opt", f"account={account}", "--provider-opt", "duration_s=5",
        "--concurrency", "16", "--out", str(tmp_path / "runs"), "--run-id", "k",
        "--governor-opt", "run_lease_s=3", "--governor-opt", "reap_interval_s=0.5",
        # a create granted but never made (worker killed first) leaves the ledger after this
        "--governor-opt", "create_grace_s=10",
        "--no-progress", env=_ray_env(ray_local))
    try:
        wait_for(lambda: sim_stats(account)["live"] >= 8, 120, "sandboxes in flight")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        kill_tree(driver)
    governor = ray.get_actor(governor_name("sim", account), namespace=NAMESPACE)
    try:
        wait_for(lambda: sim_stats(account)["live"] == 0, 60, "the reaper to destroy orphans")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {_leftovers(account, governor)}") from None
    # grants never created: gone create_grace_s (10 s) after the grant, at the next look
    wait_for(lambda: not ray.get(governor.entries.remote("k")), 60, "an empty ledger")
    assert ray.get(governor.stats.remote())["reaped"] >= 8


def test_a_later_runs_explicit_policy_holds_on_the_running_governor(ray_local):
    import ray

    from hud_ray.governor import get_governor
    from providers.sim import SimProvider

    account = f"acct-{uuid.uuid4().hex[:6]}"
    provider = SimProvider(account=account)
    first = get_governor(provider, {"account": account}, {"live_cap": 3})
    again = get_governor(provider, {"account": account}, {"live_cap": 5, "create_rate": 7.0})
    assert ray.get(again.stats.remote())["policy"]["live_cap"] == 5
    assert ray.get(first.stats.remote())["policy"]["create_rate"] == 7.0  # one actor
    found = get_governor(provider, {"account": account}, {"live_cap": 9}, apply_policy=False)
    assert ray.get(found.stats.remote())["policy"]["live_cap"] == 5, "a worker only finds it"
    ray.kill(found)
