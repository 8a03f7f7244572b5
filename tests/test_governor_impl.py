"""The governor without Ray: its reaper (orphans whose create never answered) and policy."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from hud_ray.governor import GovernorImpl
from providers import LABEL_ROLLOUT, LABEL_RUN, LABEL_SANDBOX, SandboxHandle, SandboxSpec
from providers.sim import SimProvider, sim_stats

RUN, KEY = "r1", "t-0#0"


def _labels(name: str) -> dict[str, str]:
    """What a governed create puts on the sandbox (GovernedProvider adds the name)."""
    return {LABEL_RUN: RUN, LABEL_ROLLOUT: KEY, LABEL_SANDBOX: name}


def _governor(account: str, **policy: float) -> GovernorImpl:
    # A reaper that never wakes on its own: each test calls reap_once itself.
    policy = {"reap_interval_s": 3600, "run_lease_s": 3600, "create_rate": 1000, **policy}
    return GovernorImpl("sim", {"account": account, "flush_s": 0}, policy, account=account)


def _entry(name: str, run_id: str = RUN) -> dict[str, Any]:
    return {"name": name, "run_id": run_id, "rollout_key": KEY, "labels": _labels(name),
            "deadline": time.time() + 3600, "worker_id": "w1"}


async def _grant(gov: GovernorImpl, name: str, run_id: str = RUN) -> None:
    assert await gov.acquire("w1", [_entry(name, run_id)]) == 1


async def _land(worker: SimProvider, name: str) -> SandboxHandle:
    """The worker's create reaches the provider (its answer never reaches the governor)."""
    return await worker.create(SandboxSpec(name=name), _labels(name))


def test_a_create_landing_after_the_first_look_is_still_reaped() -> None:
    account = f"late-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account)
        worker = SimProvider(account=account, flush_s=0)
        await _grant(gov, "sb-late")
        await gov.worker_gone("w1")  # its create is still in flight
        assert await gov.entries(RUN), "not found yet: the entry must stay in the ledger"
        await _land(worker, "sb-late")
        assert sim_stats(account)["live"] == 1
        assert await gov.reap_once() == 1
        assert sim_stats(account)["live"] == 0
        assert await gov.entries(RUN) == []

    asyncio.run(go())


def test_only_the_granted_sandbox_is_taken_not_its_rollouts_next_attempt() -> None:
    account = f"name-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account)
        worker = SimProvider(account=account, flush_s=0)
        await _grant(gov, "sb-a0")
        await _land(worker, "sb-a0")
        await _land(worker, "sb-a1")  # same run and rollout, not granted here
        await gov.worker_gone("w1")
        books = await SimProvider(account=account).list({LABEL_RUN: RUN})  # not the worker's view
        assert [h.name for h in books] == ["sb-a1"]

    asyncio.run(go())


class _Nameless(SimProvider):
    """Lists like Modal: no names, and the query's labels instead of the sandbox's."""

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        return [h.model_copy(update={"name": "", "labels": dict(labels)})
                for h in await super().list(labels)]


def test_a_listing_without_names_still_finds_exactly_the_granted_sandbox() -> None:
    account = f"anon-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account)
        worker = SimProvider(account=account, flush_s=0)
        await _grant(gov, "sb-n0")
        await _land(worker, "sb-n0")
        await _land(worker, "sb-n1")
        gov._provider = _Nameless(account=account)
        assert await gov.worker_gone("w1") is None
        books = await SimProvider(account=account).list({LABEL_RUN: RUN})
        assert [h.name for h in books] == ["sb-n1"]
        assert await gov.entries(RUN) == []

    asyncio.run(go())


def test_a_handle_arriving_after_the_run_came_back_is_still_destroyed() -> None:
    account = f"hand-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account)
        worker = SimProvider(account=account, flush_s=0)
        await _grant(gov, "sb-h")
        assert await gov.reap_run(RUN) == 0  # a resume: nothing found yet
        await gov.heartbeat(RUN)  # the new driver: the run is alive again
        handle = await _land(worker, "sb-h")
        await gov.update([("sb-h", handle.model_dump(mode="json"))], [])
        assert await gov.reap_once() == 1, "once chosen, an orphan stays one"
        assert sim_stats(account)["live"] == 0

    asyncio.run(go())


def test_a_resumed_run_reusing_a_name_gets_its_own_sandbox_kept() -> None:
    account = f"reuse-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account)
        old_worker = SimProvider(account=account, flush_s=0)
        await _grant(gov, "sb-r")
        assert await gov.reap_run(RUN) == 0
        await _land(old_worker, "sb-r")  # the dead driver's create lands late
        await gov.heartbeat(RUN)
        await _grant(gov, "sb-r")  # the resumed run, same rollout, same name
        assert sim_stats(account)["live"] == 0, "the old sandbox goes before the grant"
        new_worker = SimProvider(account=account, flush_s=0)
        await _land(new_worker, "sb-r")
        assert await gov.reap_once() == 0
        assert sim_stats(account)["live"] == 1
        (entry,) = await gov.entries(RUN)
        assert not entry["doomed"]

    asyncio.run(go())


def test_a_create_that_never_lands_is_forgotten_after_the_grace() -> None:
    account = f"grace-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account, create_grace_s=0)
        await _grant(gov, "sb-never")
        await gov.worker_gone("w1")
        assert await gov.entries(RUN) == []
        assert (await gov.stats())["reaped"] == 0, "nothing was destroyed: none counted"

    asyncio.run(go())


def test_a_runs_own_lease_holds_when_a_later_run_shortens_the_policys() -> None:
    account = f"lease-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account)
        worker = SimProvider(account=account, flush_s=0)
        await gov.heartbeat("early", 3600)
        await _grant(gov, "sb-early", "early")
        handle = await _land(worker, "sb-early")
        await gov.update([("sb-early", handle.model_dump(mode="json"))], [])
        await gov.configure({"run_lease_s": 0.0})  # a later run's setting
        await gov.heartbeat("late", 0.0)
        await _grant(gov, "sb-late", "late")
        assert await gov.reap_once() == 0  # sb-late: an orphan, but not created yet
        doomed = {e["name"]: e["doomed"] for e in await gov.entries()}
        assert doomed == {"sb-early": False, "sb-late": True}

    asyncio.run(go())


def test_a_later_runs_explicit_settings_change_the_running_governor() -> None:
    async def go() -> None:
        gov = _governor(f"cfg-{uuid.uuid4().hex[:6]}", live_cap=1)
        await _grant(gov, "sb-1")
        assert await gov.acquire("w1", [_entry("sb-2")], timeout_s=0.05) == 0, "at the cap"
        assert await gov.configure({"live_cap": 2, "create_rate": 500.0}) == {
            "live_cap": 2, "create_rate": 500.0}
        assert await gov.acquire("w1", [_entry("sb-2")], timeout_s=0.05) == 1
        stats = await gov.stats()
        assert stats["policy"]["live_cap"] == 2 and stats["rate"] == 500.0
        assert await gov.configure({"live_cap": 2}) == {}, "unchanged: nothing to report"

    asyncio.run(go())


def test_every_policy_setting_is_in_the_cluster_docs() -> None:
    from pathlib import Path

    from hud_ray.governor import GovernorPolicy

    doc = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    missing = [k for k in GovernorPolicy.model_fields if f"| `{k}` |" not in doc]
    assert not missing, f"docs/cluster.md section 7 lacks {missing}"
