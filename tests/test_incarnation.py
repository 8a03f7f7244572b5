"""Incarnations without Ray: exact reaps, the judgement on leftovers, the writer lock."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from hud_ray.incarnation import driver_alive, driver_identity
from hud_ray.inflight import lost_sandbox_labels
from hud_ray.leftovers import _judge
from hud_ray.results import ResultWriter, RunDirError
from hud_ray.rollout import RolloutConfig, rollout_labels
from providers import LABEL_SANDBOX, SandboxHandle, SandboxSpec, sandbox_name
from providers.local import LocalProvider

from .conftest import DEMO_ENV


def test_a_reap_after_a_worker_death_never_finds_the_live_retry(tmp_path):
    """Issue 20, suspected: the reap of a lost attempt matched run + rollout key only, so
    it could destroy the retry's live sandbox. It matches the exact sandbox now."""
    provider = LocalProvider(env_file=str(DEMO_ENV), state_dir=str(tmp_path))
    config = RolloutConfig(run_id="run", incarnation="abcd0123", attempt=2)
    retry = SandboxSpec(name=sandbox_name("run", "t#0", 2, "abcd0123"))

    async def main() -> tuple[list[SandboxHandle], list[SandboxHandle]]:
        handle = await provider.create(
            retry, {**rollout_labels(config, "t#0"), LABEL_SANDBOX: retry.name})
        try:
            lost = await provider.reap(lost_sandbox_labels("run", "t#0", 1, "abcd0123"))
            alive = await provider.list({LABEL_SANDBOX: retry.name})
        finally:
            await provider.destroy(handle)
        return lost, alive

    lost, alive = asyncio.run(main())
    assert lost == [] and [h.name for h in alive] == [retry.name]


def _handle(run: str, incarnation: str, driver: str | None) -> SandboxHandle:
    labels = {"hud-ray-run": run, "hud-ray-incarnation": incarnation}
    if driver:
        labels["hud-ray-driver"] = driver
    return SandboxHandle(provider="local", sandbox_id=f"{run}-{incarnation}",
                         name=f"{run}-{incarnation}", labels=labels)


def test_leftovers_of_dead_drivers_go_live_and_unknown_ones_stay():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_identity = driver_identity(dead.pid)
    dead.wait()
    assert driver_alive(dead_identity) is False
    assert driver_alive(driver_identity()) is True
    assert driver_alive("elsewhere:1:2.00") is None
    handles = [_handle("r", "old", dead_identity), _handle("r", "live", driver_identity()),
               _handle("other", "x", "elsewhere:1:2.00"), _handle("r", "mine", None),
               _handle("r", "old2", None)]
    doomed, unknown = _judge(handles, "r", "mine", resume=False)
    assert [h.labels["hud-ray-incarnation"] for h in doomed] == ["old"]
    assert unknown == {("other", "x"): 1, ("r", "old2"): 1}
    doomed, unknown = _judge(handles, "r", "mine", resume=True)  # a resume owns its run
    assert [h.labels["hud-ray-incarnation"] for h in doomed] == ["old", "old2"]


def test_the_writer_lock_is_released_on_close_and_by_death(tmp_path):
    first = ResultWriter(tmp_path / "r", config={})
    with pytest.raises(RunDirError, match=f"pid {os.getpid()} "):
        ResultWriter(tmp_path / "r", config={}, resume=True)
    first.close()
    ResultWriter(tmp_path / "r", config={}, resume=True).close()  # free again
    # A holder killed without closing: the kernel frees its lock.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hud_ray.results import ResultWriter; "
        f"w = ResultWriter({str(tmp_path / 'r')!r}, config={{}}, resume=True); "
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirError, match="being written by another driver"):
        ResultWriter(tmp_path / "r", config={}, resume=True)
    holder.kill()
    holder.wait()
    ResultWriter(tmp_path / "r", config={}, resume=True).close()
