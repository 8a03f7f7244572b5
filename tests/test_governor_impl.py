"""The governor without Ray: its reaper (orphans whose create never answered) and policy."""

from __future__ import annotations

import asyncio
import time
import uuid

from hud_ray.governor import GovernorImpl
from providers import LABEL_ROLLOUT, LABEL_RUN, SandboxSpec
from providers.sim import SimProvider, sim_stats

RUN, KEY = "r1", "t-0#0"
LABELS = {LABEL_RUN: RUN, LABEL_ROLLOUT: KEY}


def _governor(account: str, **policy: float) -> GovernorImpl:
    # A reaper that never wakes on its own: each test calls reap_once itself.
    policy = {"reap_interval_s": 3600, "run_lease_s": 3600, **policy}
    return GovernorImpl("sim", {"account": account, "flush_s": 0}, policy, account=account)


def _entry(name: str) -> dict:
    return {"name": name, "run_id": RUN, "rollout_key": KEY, "labels": LABELS,
            "deadline": time.time() + 3600, "worker_id": "w1"}


async def _grant(gov: GovernorImpl, name: str) -> None:
    assert await gov.acquire("w1", [_entry(name)]) == 1


def test_a_create_landing_after_the_first_look_is_still_reaped() -> None:
    account = f"late-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account)
        worker = SimProvider(account=account, flush_s=0)
        await _grant(gov, "sb-late")
        await gov.worker_gone("w1")  # its create is still in flight
        assert await gov.entries(RUN), "not found yet: the entry must stay in the ledger"
        await worker.create(SandboxSpec(name="sb-late"), LABELS)  # ...and now it lands
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
        await worker.create(SandboxSpec(name="sb-a0"), LABELS)
        await worker.create(SandboxSpec(name="sb-a1"), LABELS)  # same rollout, not granted here
        await gov.worker_gone("w1")
        books = await SimProvider(account=account).list({LABEL_RUN: RUN})  # not the worker's view
        assert [h.name for h in books] == ["sb-a1"]

    asyncio.run(go())


def test_a_handle_arriving_after_the_entry_was_doomed_is_destroyed() -> None:
    account = f"hand-{uuid.uuid4().hex[:6]}"

    async def go() -> None:
        gov = _governor(account)
        worker = SimProvider(account=account, flush_s=0)
        await _grant(gov, "sb-h")
        await gov.worker_gone("w1")
        handle = await worker.create(SandboxSpec(name="sb-h"), {LABEL_RUN: "unlabelled"})
        await gov.update([("sb-h", handle.model_dump(mode="json"))], [])
        assert await gov.reap_once() == 1
        assert sim_stats(account)["live"] == 0

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


def test_a_later_runs_explicit_settings_change_the_running_governor() -> None:
    async def go() -> None:
        gov = _governor(f"cfg-{uuid.uuid4().hex[:6]}", live_cap=1, create_rate=1000)
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
