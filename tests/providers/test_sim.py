"""The `sim` provider: seeded fates, real HUD wire protocol, failure mapping, account books."""

from __future__ import annotations

import asyncio
import json
import math
import statistics

import pytest

from hud_ray.agents import resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, Task
from hud_ray.wire import EnvClient, RemoteError, TransportError, WireTimeout
from providers import (
    CreateError,
    NotReadyError,
    ProviderConfigError,
    QuotaError,
    SandboxSpec,
    get_provider,
)
from providers.sim import SimProvider, sim_stats


def run(coro):
    return asyncio.run(coro)


def rollout(answer: str = "42", i: int = 0, template: str = "anything") -> Rollout:
    return Rollout(task=Task(id=template, args={"answer": answer}), repeat=i)


async def answering(session) -> str:
    """An agent that knows the answer (the sim's grading rule: answer == args.answer)."""
    return session.task.args["answer"]


def binomial_ok(k: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(k - n * p) <= sigmas * sd + 1


# --- options and draws ---------------------------------------------------------------------
def test_options_arrive_as_strings_and_bad_ones_are_named() -> None:
    p = get_provider("sim", crash_rate="0.25", cold_start_s="1.5", record="false", seed="7",
                     live_cap="3", work_in="start")
    assert isinstance(p, SimProvider)
    assert (p.options.crash_rate, p.options.cold_start_s, p.options.record) == (0.25, 1.5, False)
    assert (p.options.seed, p.options.live_cap) == (7, 3)
    with pytest.raises(ProviderConfigError, match="crash_rate"):
        get_provider("sim", crash_rate="1.5")
    with pytest.raises(ProviderConfigError, match="hang_rat"):
        get_provider("sim", hang_rat="0.1")
    with pytest.raises(ProviderConfigError, match="create_burst needs create_rate"):
        get_provider("sim", create_burst="5")
    with pytest.raises(ProviderConfigError, match="account"):
        get_provider("sim", account="../escape")


def test_fates_are_a_function_of_seed_and_name() -> None:
    opts = dict(crash_rate=0.5, hang_rate=0.5, duration_mu=0.0, duration_sigma=1.0, record=False)
    a, b = SimProvider(seed=1, **opts), SimProvider(seed=1, **opts)
    other = SimProvider(seed=2, **opts)
    names = [f"hudray-{i:04d}" for i in range(200)]
    assert [repr(a.fate(n)) for n in names] == [repr(b.fate(n)) for n in names]
    assert [repr(a.fate(n)) for n in names] != [repr(other.fate(n)) for n in names]
    # A retried attempt has a new name, hence a fresh draw.
    assert len({a.fate(n).duration_s for n in names}) == len(names)


def test_create_outcomes_replay_by_seed() -> None:
    def outcomes(seed: int) -> list[str]:
        p = SimProvider(seed=seed, create_fail_rate=0.3, quota_rate=0.2, record=False)

        async def go() -> list[str]:
            out = []
            for i in range(300):
                try:
                    await p.create(SandboxSpec(name=f"n{i}"), {})
                    out.append("ok")
                except CreateError:
                    out.append("fail")
                except QuotaError as exc:
                    assert exc.retry_after_s == p.options.quota_retry_after_s
                    out.append("quota")
            return out
        return run(go())

    first = outcomes(11)
    assert first == outcomes(11)
    assert first != outcomes(12)


def test_failure_rates_are_roughly_honoured() -> None:
    n = 2000
    p = SimProvider(account="rates", create_fail_rate=0.1, quota_rate=0.05, crash_rate=0.02,
                    hang_rate=0.2, tunnel_drop_rate=0.5, env_error_rate=0.01, ready_fail_rate=0.3)
    counts = {"ok": 0, "fail": 0, "quota": 0}

    async def go() -> None:
        for i in range(n):
            try:
                await p.create(SandboxSpec(name=f"r{i}"), {})
                counts["ok"] += 1
            except CreateError:
                counts["fail"] += 1
            except QuotaError:
                counts["quota"] += 1
    run(go())
    # The quota draw comes first, then a create failure among the rest.
    assert binomial_ok(counts["quota"], n, 0.05), counts
    assert binomial_ok(counts["fail"], n - counts["quota"], 0.1), counts
    fates = [p.fate(f"f{i}") for i in range(n)]
    for field, rate in [("crash", 0.02), ("hang", 0.2), ("tunnel_drop", 0.5),
                        ("env_error", 0.01), ("ready_fail", 0.3)]:
        hits = sum(getattr(f, field) for f in fates)
        assert binomial_ok(hits, n, rate), (field, hits)
    stats = sim_stats("rates")
    assert (stats["creates"], stats["quota_errors"], stats["create_failures"]) == (
        counts["ok"], counts["quota"], counts["fail"])
    assert stats["live"] == stats["peak_live"] == counts["ok"]


def test_lognormal_times_and_caps() -> None:
    p = SimProvider(duration_mu=math.log(2.0), duration_sigma=0.5, cold_start_mu=math.log(0.1),
                    cold_start_sigma=1.0, cold_start_max_s=0.3, record=False)
    fates = [p.fate(f"x{i}") for i in range(2000)]
    durations = [f.duration_s for f in fates]
    assert 1.85 < statistics.median(durations) < 2.15
    logs = [math.log(d) for d in durations]
    assert 0.45 < statistics.stdev(logs) < 0.55
    assert max(f.cold_start_s for f in fates) == 0.3
    assert SimProvider(cold_start_s=0.7, record=False).fate("a").cold_start_s == 0.7


# --- full rollouts through hud_ray's runner --------------------------------------------------
def test_rollouts_grade_answers_and_zero_work_agents_see_the_duration() -> None:
    async def go() -> None:
        p = SimProvider(account="ok", duration_s=0.2)
        good = await run_rollout(rollout("42", 0), answering, p, RolloutConfig(deadline_s=10))
        nop = await run_rollout(rollout("42", 1), resolve_agent("nop"), p,
                                RolloutConfig(deadline_s=10))
        assert (good.status, good.reward) == (Status.OK, 1.0)
        assert (nop.status, nop.reward) == (Status.OK, 0.0)
        # The env's work time: the grade reply comes >= 0.2 s after the start reply.
        assert nop.agent_s + nop.grade_s >= 0.19
        assert good.grade["info"]["sim_duration_s"] == 0.2
        assert good.sandbox_id != nop.sandbox_id and good.sandbox_id.startswith("sim-")
        q = SimProvider(account="ok", duration_s=0.2, work_in="start")
        started = await run_rollout(rollout("7", 2), answering, q, RolloutConfig(deadline_s=10))
        assert started.status is Status.OK and started.start_s >= 0.19
        await p.close()
        await q.close()
    run(go())
    stats = sim_stats("ok")
    assert (stats["creates"], stats["live"], stats["peak_live"]) == (3, 0, 1)


@pytest.mark.parametrize(
    ("options", "status", "phase"),
    [
        ({"crash_rate": 1, "duration_s": 0.3}, Status.INFRA_ERROR, None),
        ({"crash_rate": 1, "duration_s": 0.3, "work_in": "start"}, Status.INFRA_ERROR, None),
        ({"tunnel_drop_rate": 1, "duration_s": 0.3}, Status.INFRA_ERROR, None),
        ({"hang_rate": 1, "deadline_s": 0.5}, Status.TIMEOUT, "grade"),
        ({"quota_rate": 1}, Status.QUOTA_ERROR, None),
        ({"create_fail_rate": 1}, Status.INFRA_ERROR, None),
        ({"ready_fail_rate": 1}, Status.INFRA_ERROR, None),
        ({"env_error_rate": 1}, Status.ENV_ERROR, None),
    ],
)
def test_failures_map_onto_the_taxonomy(options: dict, status: Status, phase: str | None) -> None:
    async def go():
        opts = dict(options)
        deadline_s = opts.pop("deadline_s", 10.0)
        p = SimProvider(account="chaos", **opts)
        row = await run_rollout(rollout(), answering, p, RolloutConfig(deadline_s=deadline_s))
        await p.close()
        return row
    row = run(go())
    assert row.status is status, row.error_message
    assert row.timeout_phase == phase
    assert row.reward is None
    assert sim_stats("chaos")["live"] == 0  # teardown destroyed whatever was created


def test_cold_start_waits_and_times_out() -> None:
    async def go() -> None:
        p = SimProvider(cold_start_s=0.3, record=False)
        handle = await p.create(SandboxSpec(name="cold"), {})
        with pytest.raises(NotReadyError, match="cold start"):
            await p.ready(handle, 0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        endpoint = await p.ready(handle, 5.0)
        assert loop.time() - t0 >= 0.2
        assert endpoint.url.startswith("tcp://127.0.0.1:")
        assert json.loads(endpoint.preamble) == {"sim_sandbox": handle.sandbox_id}
        await p.destroy(handle)
        with pytest.raises(NotReadyError, match="not live"):
            await p.ready(handle, 1.0)
        await p.close()
    run(go())


def test_concurrent_first_ready_calls_share_one_listener() -> None:
    async def go() -> None:
        p = SimProvider(record=False)
        handles = [await p.create(SandboxSpec(name=f"first{i}"), {}) for i in range(300)]
        endpoints = await asyncio.gather(*(p.ready(h, 5) for h in handles))
        assert len({e.url for e in endpoints}) == 1
        client = await EnvClient.connect(endpoints[0].url, preamble=endpoints[0].preamble,
                                         ready_timeout_s=2, heartbeat_s=None)
        await client.bye()
        await p.close()
    run(go())
    # A new event loop (a new asyncio.run) gets a new listener; sandboxes carry over.
    p = SimProvider(record=False)

    async def make():
        return await p.create(SandboxSpec(name="carry"), {}), await p.ready(
            await p.create(SandboxSpec(name="x"), {}), 5)

    handle, first = run(make())

    async def again():
        ep = await p.ready(handle, 5)
        client = await EnvClient.connect(ep.url, preamble=ep.preamble, ready_timeout_s=2,
                                         heartbeat_s=None)
        await client.bye()
        return ep

    assert run(again()).url != first.url


# --- the wire protocol, spoken raw -----------------------------------------------------------
async def _raw(endpoint, *frames: dict, preamble: bool = True) -> list[dict | None]:
    host, port = endpoint.host_port
    reader, writer = await asyncio.open_connection(host, port)
    if preamble:
        writer.write(endpoint.preamble)
    replies: list[dict | None] = []
    for frame in frames:
        writer.write(json.dumps(frame).encode() + b"\n")
        line = await asyncio.wait_for(reader.readline(), 5)
        replies.append(json.loads(line) if line else None)
    writer.close()
    return replies


def test_protocol_methods_and_errors() -> None:
    async def go() -> None:
        p = SimProvider(record=False, hang_rate=1)
        handle = await p.create(SandboxSpec(name="proto"), {})
        ep = await p.ready(handle, 5)
        [no_preamble] = await _raw(ep, {"jsonrpc": "2.0", "id": 1, "method": "hello"},
                                   preamble=False)
        assert no_preamble["error"]["code"] == -32600
        replies = await _raw(
            ep,
            {"jsonrpc": "2.0", "id": 1, "method": "tasks.list"},
            {"jsonrpc": "2.0", "id": 2, "method": "tasks.grade", "params": {"answer": "x"}},
            {"jsonrpc": "2.0", "id": 3, "method": "nope"},
            {"jsonrpc": "2.0", "id": 4, "method": "hello", "params": {"session_id": "other"}},
            {"jsonrpc": "2.0", "id": 5, "method": "tasks.start", "params": {"id": 5}},
            {"jsonrpc": "2.0", "id": 6, "method": "bye"},
        )
        assert replies[0]["result"]["tasks"][0]["id"] == "*"
        assert [r["error"]["code"] for r in replies[1:5]] == [-32600, -32601, -32600, -32602]
        assert replies[5]["result"] == {"goodbye": True}
        # A hung grade still yields to tasks.cancel, as hud's server does.
        client = await EnvClient.connect(ep.url, preamble=ep.preamble, ready_timeout_s=5)
        await client.start("t", {"answer": "a"})
        grading = asyncio.ensure_future(client.grade("a", timeout_s=5))
        await asyncio.sleep(0)  # let the grade frame go out before the cancel
        await client.cancel()
        with pytest.raises(RemoteError, match="interrupted"):
            await grading
        await client.bye()
        # A sandbox that is gone looks like a host that is gone: nothing answers hello.
        await p.destroy(handle)
        with pytest.raises(WireTimeout):
            await EnvClient.connect(ep.url, preamble=ep.preamble, ready_timeout_s=0.3,
                                    retry_interval_s=0.05)
        await p.close()
    run(go())


def test_tunnel_echo_drop_resume_and_crash() -> None:
    async def go() -> None:
        p = SimProvider(record=False, tunnel_drop_rate=1, duration_s=0.2)
        handle = await p.create(SandboxSpec(name="tunnels"), {})
        ep = await p.ready(handle, 5)
        client = await EnvClient.connect(ep.url, preamble=ep.preamble, heartbeat_s=None)
        assert client.bindings[0]["name"] == "echo"
        reader, writer = await client.open_tunnel("echo")
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        with pytest.raises(RemoteError, match="unknown capability"):
            await client.open_tunnel("vnc")
        await client.start("t", {"answer": "a"})
        # The drop resets every connection, the tunnel included …
        assert await asyncio.wait_for(reader.read(), 5) == b""
        session_id = client.session_id
        await client.close()
        # … but the sandbox lives on: a new connection resumes the task and grades it.
        again = await EnvClient.connect(ep.url, preamble=ep.preamble, heartbeat_s=None,
                                        hello_params={"session_id": session_id})
        assert (await again.grade("a"))["score"] == 1.0
        await again.bye()
        await p.destroy(handle)

        crashy = SimProvider(record=False, crash_rate=1)
        handle = await crashy.create(SandboxSpec(name="crash"), {})
        ep = await crashy.ready(handle, 5)
        client = await EnvClient.connect(ep.url, preamble=ep.preamble, heartbeat_s=None)
        await client.start("t", {})
        with pytest.raises(TransportError):
            await client.grade("", timeout_s=5)
        await client.close()
        with pytest.raises(WireTimeout):  # a crashed env never answers again
            await EnvClient.connect(ep.url, preamble=ep.preamble, ready_timeout_s=0.3,
                                    retry_interval_s=0.05)
        await p.close()
        await crashy.close()
    run(go())
