"""Injected faults against the fake Daytona API and SSH gateway, one per test, each through
the real SDK client, the real asyncssh forward and (mostly) a real `run_rollout`."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from hud_ray.agents.rule import rule_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, Task
from providers import (
    LABEL_ROLLOUT,
    LABEL_RUN,
    ProviderConfigError,
    QuotaError,
    SandboxError,
    SandboxSpec,
)
from providers.daytona import DaytonaProvider
from tests.fakes.daytona_api import FakeDaytona, provider_options

REPO = Path(__file__).resolve().parents[2]
ARITH = Task(env="demo", id="arith", args={"a": 2, "b": 40, "op": "+"})
CREATE = r"^/api/sandbox$"


@pytest.fixture
def fake():
    with FakeDaytona() as fake:
        yield fake


async def until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.02)


def rollout_row(provider: DaytonaProvider, agent=rule_agent, run_id: str = "faults"):
    config = RolloutConfig(run_id=run_id, deadline_s=60, ready_timeout_s=30, heartbeat_s=None)

    async def main():
        try:
            return await run_rollout(Rollout(task=ARITH), agent, provider, config)
        finally:
            await provider.close()

    return asyncio.run(main())


def test_429_then_success_honours_retry_after(fake: FakeDaytona) -> None:
    fake.fail("POST", CREATE, 429, headers={"Retry-After": "1"}, message="Too Many Requests")
    row = rollout_row(DaytonaProvider(**provider_options(fake)))
    assert row.status is Status.OK and row.reward == 1.0, row.error_message
    first, second = fake.times("POST", CREATE)
    assert second - first >= 1.0  # back-off alone would have been ≤ 0.02 s
    # A 429 was refused before anything existed: no name lookup before the second create.
    assert fake.count("GET", r"^/api/sandbox/hudray-") == 0
    assert fake.live() == []


def test_429_past_the_retry_budget_is_a_quota_error(fake: FakeDaytona) -> None:
    fake.fail("POST", CREATE, 429, times=10, headers={"Retry-After": "0"})
    row = rollout_row(DaytonaProvider(**provider_options(fake, max_retries=2)))
    assert row.status is Status.QUOTA_ERROR and not row.fatal
    assert row.error_type == "QuotaError" and "after 3 attempt(s)" in row.error_message
    assert fake.count("POST", CREATE) == 3 and fake.live() == []


def test_long_retry_after_ends_the_call_at_once_with_its_hint(fake: FakeDaytona) -> None:
    fake.fail("POST", CREATE, 429, headers={"Retry-After": "600"})
    provider = DaytonaProvider(**provider_options(fake, retry_after_max_s=5))

    async def main():
        try:
            with pytest.raises(QuotaError) as info:
                await provider.create(SandboxSpec(name="hudray-ra"), {})
            return info.value
        finally:
            await provider.close()

    error = asyncio.run(main())
    assert error.retry_after_s == 600.0  # for the scheduler's back-off
    assert fake.count("POST", CREATE) == 1


def test_503_burst_then_success(fake: FakeDaytona) -> None:
    fake.fail("POST", CREATE, 503, times=3, message="Service Unavailable")
    row = rollout_row(DaytonaProvider(**provider_options(fake)))
    assert row.status is Status.OK and row.reward == 1.0, row.error_message
    assert fake.count("POST", CREATE) == 4
    # A 5xx may hide a created sandbox: the name was looked up before each new create.
    assert fake.count("GET", r"^/api/sandbox/hudray-") == 3
    assert len(fake.deleted) == 1 and fake.live() == []


def test_capacity_limit_403_is_quota_not_configuration(fake: FakeDaytona) -> None:
    fake.fail("POST", CREATE, 403, times=5,
              message="Total CPU limit exceeded. Maximum allowed: 10.")
    row = rollout_row(DaytonaProvider(**provider_options(fake, max_retries=1)))
    assert row.status is Status.QUOTA_ERROR and not row.fatal, row.error_message
    assert "Total CPU limit exceeded" in row.error_message


def test_create_timeout_after_the_sandbox_exists_finds_it_by_name(fake: FakeDaytona) -> None:
    fake.hang_create(4.0)  # the sandbox is made, the answer comes after the client gave up
    row = rollout_row(DaytonaProvider(**provider_options(fake, create_timeout_s=1)))
    assert row.status is Status.OK and row.reward == 1.0, row.error_message
    assert fake.count("POST", CREATE) == 1  # adopted, not created twice
    assert len(fake.deleted) == 1 and fake.live() == []


def test_create_timeout_with_a_sandbox_id_deletes_that_sandbox(fake: FakeDaytona) -> None:
    fake.slow_start(30.0)  # the first sandbox never reaches "started" within the timeout
    row = rollout_row(DaytonaProvider(**provider_options(fake, create_timeout_s=1)))
    assert row.status is Status.OK and row.reward == 1.0, row.error_message
    assert fake.count("POST", CREATE) == 2
    assert len(fake.deleted) == 2 and fake.live() == []
    stuck, used = sorted(fake.deleted.values(), key=lambda s: s.created)
    assert stuck.sessions == {}  # never used: deleted as soon as the SDK gave up on it
    assert row.sandbox_id == used.id


def test_ssh_daemon_refusing_the_first_connects(fake: FakeDaytona) -> None:
    fake.gateway.refuse_first_connects = 3
    row = rollout_row(DaytonaProvider(**provider_options(fake)))
    assert row.status is Status.OK and row.reward == 1.0, row.error_message
    outcomes = [a.outcome for a in fake.gateway.auths]
    assert outcomes[:3] == ["refused"] * 3 and "accepted" in outcomes[3:]
    assert fake.live() == []


def test_tunnel_dropped_mid_rollout_is_an_infra_error_and_the_sandbox_goes(
    fake: FakeDaytona,
) -> None:
    dropped: list[str] = []

    async def agent_losing_its_tunnel(session):
        (sandbox,) = [s for s in fake.live() if s.labels.get(LABEL_ROLLOUT) == session.rollout_key]
        assert fake.gateway.drop(sandbox.id) == 1
        dropped.append(sandbox.id)
        await until(lambda: session.client._broken is not None)  # the local socket closed
        return await rule_agent(session)

    row = rollout_row(DaytonaProvider(**provider_options(fake)), agent=agent_losing_its_tunnel)
    assert row.status is Status.INFRA_ERROR, row
    assert "tasks.grade" in row.error_message and "closed the connection" in row.error_message
    assert dropped == [row.sandbox_id] and row.sandbox_id in fake.deleted
    assert fake.live() == []


def test_failed_delete_is_left_for_reap(fake: FakeDaytona) -> None:
    fake.fail("DELETE", r"^/api/sandbox/[^/]+$", 500, times=2, message="Internal Server Error")
    provider = DaytonaProvider(**provider_options(fake, max_retries=1))
    row = rollout_row(provider, run_id="leaky")
    assert row.status is Status.OK and row.reward == 1.0  # graded before teardown failed
    assert "teardown" in row.error_message and "reap" in row.error_message
    (left,) = fake.live()
    assert left.labels[LABEL_RUN] == "leaky"

    async def reap():
        reaper = DaytonaProvider(**provider_options(fake))
        try:
            return await reaper.reap({LABEL_RUN: "leaky"})
        finally:
            await reaper.close()

    reaped = asyncio.run(reap())
    assert [h.sandbox_id for h in reaped] == [left.id]
    assert fake.live() == [] and fake.server_pids() == []


def test_auth_error_is_fatal_and_names_the_api_key(fake: FakeDaytona) -> None:
    row = rollout_row(DaytonaProvider(**provider_options(fake, api_key="wrong-key")))
    assert row.status is Status.INFRA_ERROR and row.fatal
    assert row.error_type == "ProviderConfigError"
    assert "DAYTONA_API_KEY" in row.error_message and "401" in row.error_message
    assert "wrong-key" not in row.error_message
    assert fake.count("POST", CREATE) == 1  # no retries for a bad key
    assert fake.create_bodies == []


def test_unreachable_api_names_the_api_url() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = DaytonaProvider(api_key="k", api_url=f"http://127.0.0.1:{port}/api",
                               max_retries=0)

    async def main():
        try:
            with pytest.raises(SandboxError, match="DAYTONA_API_URL"):
                await provider.create(SandboxSpec(name="hudray-nowhere"), {})
        finally:
            await provider.close()

    asyncio.run(main())


def test_cancelled_create_deletes_what_it_made(fake: FakeDaytona) -> None:
    fake.hang_create(5.0)
    provider = DaytonaProvider(**provider_options(fake))

    async def main():
        task = asyncio.create_task(provider.create(SandboxSpec(name="hudray-c"), {}))
        await until(lambda: len(fake.live()) == 1)  # made on the server, answer pending
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: fake.live() == [])  # found by name and deleted, off-path
        await provider.close()

    asyncio.run(main())
    assert len(fake.deleted) == 1


def test_bad_request_fails_fast_naming_the_settings(fake: FakeDaytona) -> None:
    fake.fail("POST", CREATE, 400, message="Invalid target 'mars'")
    provider = DaytonaProvider(**provider_options(fake, target="mars"))

    async def main():
        try:
            with pytest.raises(ProviderConfigError, match="DAYTONA_TARGET='mars'"):
                await provider.create(SandboxSpec(name="hudray-br"), {})
        finally:
            await provider.close()

    asyncio.run(main())
    assert fake.count("POST", CREATE) == 1
