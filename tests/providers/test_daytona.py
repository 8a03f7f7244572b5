"""The daytona provider end to end: the REAL AsyncDaytona client and a real asyncssh forward
against a loopback fake Daytona API (tests/fakes/daytona_api.py) whose sandboxes are real
env-server processes behind a real SSH gateway (tests/fakes/ssh_gateway.py)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import asyncssh
import pytest

from hud_ray.agents.rule import rule_agent
from hud_ray.rollout import RolloutConfig, run_rollout, sandbox_spec
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, load_tasks
from providers import (
    LABEL_OWNER,
    LABEL_ROLLOUT,
    LABEL_RUN,
    NotReadyError,
    ProviderConfigError,
    Resources,
    SandboxSpec,
    UnsupportedSpecError,
    get_provider,
    sandbox_name,
)
from providers.daytona import DaytonaProvider
from tests.fakes.daytona_api import FakeDaytona, provider_options

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake():
    with FakeDaytona() as fake:
        yield fake


def run(coro):
    return asyncio.run(coro)


async def until(predicate, timeout_s: float = 10.0) -> None:
    """Poll a condition with a deadline (never a bare sleep standing in for sync)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.02)


def one_task_per_template() -> list[Rollout]:
    seen: dict[str, Rollout] = {}
    for task in load_tasks(REPO / "examples" / "demo" / "tasks.jsonl"):
        seen.setdefault(task.id, Rollout(task=task))
    return list(seen.values())


def config(run_id: str = "run-d", **kw) -> RolloutConfig:
    return RolloutConfig(run_id=run_id, deadline_s=60, ready_timeout_s=30, heartbeat_s=None, **kw)


def test_rollouts_through_fake_daytona(fake: FakeDaytona) -> None:
    rollouts = one_task_per_template()
    assert {r.task.id for r in rollouts} == {"count", "arith", "reverse", "sort", "kv_lookup",
                                             "riddle"}
    provider = get_provider("daytona", **provider_options(fake))

    async def main():
        try:
            return await asyncio.gather(
                *(run_rollout(r, rule_agent, provider, config()) for r in rollouts)
            )
        finally:
            await provider.close()

    rows = run(main())
    for row in rows:
        assert row.status is Status.OK, row.error_message
        assert row.reward == (0.0 if row.template_id == "riddle" else 1.0), row
        assert row.provider == "daytona"
    assert fake.live() == [] and fake.server_pids() == []
    assert len(fake.deleted) == len(rollouts)

    # What each create asked for: deterministic name, labels, TTL from the deadline, an idle
    # auto-stop that is never 0, ephemeral.
    spec = sandbox_spec(rollouts[0], config(), 60)
    assert len(fake.create_bodies) == len(rollouts)
    names = {b["name"] for b in fake.create_bodies}
    assert names == {sandbox_name("run-d", r.rollout_key, 1) for r in rollouts}
    for body in fake.create_bodies:
        assert body["labels"][LABEL_RUN] == "run-d"
        assert body["labels"][LABEL_OWNER] == "hud-ray"
        assert body["labels"][LABEL_ROLLOUT] in {r.rollout_key for r in rollouts}
        assert body["ttlMinutes"] == math.ceil(spec.lifetime_s / 60)
        assert body["autoStopInterval"] == 15
        assert body["autoDeleteInterval"] == 0  # ephemeral
        assert body["public"] is False
    # The env server: configurable command run in /app, bound to loopback, one port setting
    # for the command and the forward.
    commands = [c.command for s in fake.deleted.values() for cmds in s.sessions.values()
                for c in cmds.values()]
    assert len(commands) == len(rollouts)
    for command in commands:
        assert command.startswith("cd /app && (")
        assert "--host 127.0.0.1 --port 8765" in command
        assert ".venv/bin/python" in command
    forwarded = [port for _, port, outcome in fake.gateway.channels if outcome == "forwarded"]
    assert forwarded and set(forwarded) == {8765}
    accepted = [a for a in fake.gateway.auths if a.outcome == "accepted"]
    assert len(accepted) == len(rollouts)  # one SSH connection per sandbox


def test_port_option_feeds_command_and_forward(fake: FakeDaytona) -> None:
    provider = DaytonaProvider(**provider_options(fake, port=9123, workdir=None,
                                                  env_vars={"FROM_OPTIONS": "1"}))
    spec = SandboxSpec(name="hudray-port", env_vars={"FROM_SPEC": "2"})

    async def main():
        handle = await provider.create(spec, {LABEL_RUN: "r"})
        try:
            endpoint = await provider.ready(handle, 20)
            assert endpoint.url.startswith("tcp://127.0.0.1:")
        finally:
            await provider.destroy(handle)
            await provider.close()

    run(main())
    (sandbox,) = fake.deleted.values()
    (command,) = [c.command for cmds in sandbox.sessions.values() for c in cmds.values()]
    assert "--port 9123" in command and not command.startswith("cd ")
    assert {p for _, p, o in fake.gateway.channels if o == "forwarded"} == {9123}
    assert sandbox.env == {"FROM_OPTIONS": "1", "FROM_SPEC": "2"}


def test_snapshot_built_once_for_concurrent_creates_and_rebuilt_on_new_recipe(
    fake: FakeDaytona,
) -> None:
    options = provider_options(fake, snapshot="demo", image="python:3.11-slim",
                               resources={"cpu": 2, "memory_gib": 4})

    async def create_many(provider: DaytonaProvider, n: int, prefix: str, spec_image=None):
        handles = await asyncio.gather(*(
            provider.create(SandboxSpec(name=f"{prefix}-{i}", image=spec_image), {LABEL_RUN: prefix})
            for i in range(n)
        ))
        await asyncio.gather(*(provider.destroy(h) for h in handles))
        return handles

    async def main():
        first = DaytonaProvider(**options)
        handles = await create_many(first, 5, "a")
        snapshots_after_first = fake.count("GET", r"^/api/snapshots/")
        # Another provider instance in the same process: resolved already, no API call.
        second = DaytonaProvider(**options)
        await create_many(second, 2, "b")
        assert fake.count("GET", r"^/api/snapshots/") == snapshots_after_first
        # A task's own image is another recipe: another snapshot, built once.
        await create_many(second, 3, "c", spec_image="python:3.12-slim")
        await first.close()
        await second.close()
        return handles

    handles = run(main())
    assert len(fake.snapshot_bodies) == 2  # five concurrent creates raced no second build
    first_name = handles[0].data["snapshot"]
    assert first_name.startswith("demo-") and len(first_name) == len("demo-") + 12
    assert {h.data["snapshot"] for h in handles} == {first_name}
    body = fake.snapshot_bodies[0]
    assert body["name"] == first_name and body["imageName"] == "python:3.11-slim"
    assert body["entrypoint"] == ["sleep", "infinity"]
    assert (body["cpu"], body["memory"]) == (2, 4)
    assert fake.snapshot_bodies[1]["imageName"] == "python:3.12-slim"
    assert fake.snapshot_bodies[1]["name"] != first_name
    used = {b["snapshot"] for b in fake.create_bodies}
    assert used == {first_name, fake.snapshot_bodies[1]["name"]}
    assert fake.live() == []


def test_image_dir_builds_one_snapshot_from_its_dockerfile_and_context(
    fake: FakeDaytona, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """`image=DIR` (one image definition): the SDK gets DIR's Dockerfile.hud and uploads what
    it COPYs — the env and `.hud-ray/` (envkit). Daytona's object storage speaks https
    only, which a loopback fake cannot serve: the SDK's upload writes to a local bucket
    here; every other call is the real SDK against the fake API."""
    import tarfile

    from daytona._async.object_storage import AsyncObjectStorage

    bucket = tmp_path / "bucket"
    bucket.mkdir()

    async def upload(self, path: str, organization_id: str, archive_base_path=None) -> str:
        digest = await self._compute_hash_for_path_md5(path, archive_base_path)
        with tarfile.open(bucket / f"{digest}.tar", "w") as tar:
            tar.add(path, arcname=archive_base_path or Path(path).name)
        return digest

    monkeypatch.setattr(AsyncObjectStorage, "upload", upload)
    demo = REPO / "examples" / "demo"
    options = provider_options(fake, snapshot="demo", image=str(demo))

    async def main():
        provider = DaytonaProvider(**options)
        handles = await asyncio.gather(*(provider.create(SandboxSpec(name=f"d-{i}"), {})
                                         for i in range(3)))
        await asyncio.gather(*(provider.destroy(h) for h in handles))
        await provider.close()
        return handles

    handles = run(main())
    [body] = fake.snapshot_bodies  # three concurrent creates, one build
    assert {h.data["snapshot"] for h in handles} == {body["name"]}
    build = body["buildInfo"]
    dockerfile = (demo / "Dockerfile.hud").read_text()
    assert build["dockerfileContent"].startswith(dockerfile.rstrip())
    assert len(build["contextHashes"]) == 2  # COPY .hud-ray/ and COPY env.py
    uploaded = set()
    for tar_path in bucket.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            uploaded |= {m.name.split(".hud-ray/", 1)[-1] for m in tar.getmembers() if m.isfile()}
    assert {"hud_ray/__init__.py", "hud_ray/envkit/server.py", "env.py"} <= uploaded, uploaded
    assert fake.live() == []


def test_named_snapshot_used_as_is_and_a_missing_one_is_a_config_error(fake: FakeDaytona) -> None:
    fake.add_snapshot("mine")

    async def main():
        ok = DaytonaProvider(**provider_options(fake, snapshot="mine"))
        handle = await ok.create(SandboxSpec(name="hudray-snap"), {})
        await ok.destroy(handle)
        await ok.close()
        missing = DaytonaProvider(**provider_options(fake, snapshot="nope"))
        with pytest.raises(ProviderConfigError, match=r"snapshot 'nope' not found.*option snapshot"):
            await missing.create(SandboxSpec(name="hudray-snap2"), {})
        await missing.close()

    run(main())
    assert [b["snapshot"] for b in fake.create_bodies] == ["mine"]
    assert fake.snapshot_bodies == []


def test_snapshot_built_elsewhere_is_waited_for_and_an_inactive_one_activated(
    fake: FakeDaytona,
) -> None:
    fake.add_snapshot("busy", state="building", polls=2)
    fake.add_snapshot("old", state="inactive")

    async def main():
        for name in ("busy", "old"):
            provider = DaytonaProvider(**provider_options(fake, snapshot=name,
                                                          snapshot_poll_s=0.05))
            handle = await provider.create(SandboxSpec(name=f"hudray-{name}"), {})
            await provider.destroy(handle)
            await provider.close()

    run(main())
    assert fake.snapshots["busy"]["state"] == "active"
    assert fake.count("GET", r"^/api/snapshots/busy$") == 3  # building, building, active
    assert fake.count("POST", r"^/api/snapshots/[^/]+/activate$") == 1
    assert [b["snapshot"] for b in fake.create_bodies] == ["busy", "old"]
    assert fake.snapshot_bodies == []  # nothing was built here


def test_list_and_reap_by_labels(fake: FakeDaytona) -> None:
    provider = DaytonaProvider(**provider_options(fake))

    async def main():
        for i, run_id in enumerate(["A", "A", "B"]):
            await provider.create(SandboxSpec(name=f"hudray-l{i}"), {LABEL_RUN: run_id})
        listed = await provider.list({LABEL_RUN: "A"})
        assert sorted(h.name for h in listed) == ["hudray-l0", "hudray-l1"]
        # A fresh instance (the CLI's `hud-ray reap`) owns nothing and still finds them.
        reaper = DaytonaProvider(**provider_options(fake))
        reaped = await reaper.reap({LABEL_RUN: "A"})
        assert sorted(h.name for h in reaped) == ["hudray-l0", "hudray-l1"]
        assert await reaper.list({LABEL_RUN: "A"}) == []
        assert [h.name for h in await reaper.list({LABEL_RUN: "B"})] == ["hudray-l2"]
        await reaper.close()
        await provider.close()  # destroys what it still owns (B), tolerates A being gone

    run(main())
    assert fake.live() == []


def test_destroy_is_idempotent_and_survives_cancellation(fake: FakeDaytona) -> None:
    provider = DaytonaProvider(**provider_options(fake))

    async def main():
        handle = await provider.create(SandboxSpec(name="hudray-d"), {})
        await provider.ready(handle, 20)
        task = asyncio.create_task(provider.destroy(handle))
        await asyncio.sleep(0)  # let destroy start, then cancel its caller
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fake.live() == []  # shielded: the delete finished anyway
        await provider.destroy(handle)  # and again: nothing left, no error
        await provider.close()

    run(main())
    assert len(fake.deleted) == 1 and fake.server_pids() == []


def test_host_key_pinned_from_the_api_checked_with_known_hosts_or_accepted_on_request(
    fake: FakeDaytona, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "known_hosts"
    good.write_text(fake.gateway.known_hosts_line())
    other_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh")
    bad = tmp_path / "wrong_hosts"  # the gateway's host and port, another key
    bad.write_text(f"[127.0.0.1]:{fake.gateway.port} {other_key.decode().strip()}\n")

    async def attempt(**extra):
        provider = DaytonaProvider(**provider_options(fake, **extra))
        handle = await provider.create(SandboxSpec(name=f"hudray-k{len(extra)}{time.time_ns()}"), {})
        try:
            await provider.ready(handle, 10)
            return handle
        finally:
            await provider.destroy(handle)
            await provider.close()

    with caplog.at_level(logging.WARNING, logger="providers.daytona"):
        pinned = run(attempt())  # the default: the key the API reports (GET /config)
        assert pinned.data["ssh_host_key_fingerprint"] == fake.gateway.fingerprint
        assert not [r for r in caplog.records if "not verified" in r.getMessage()]
        accepted = run(attempt(host_key_policy="accept-any"))
    assert accepted.data["ssh_host_key_fingerprint"] == fake.gateway.fingerprint
    warnings = [r for r in caplog.records if "host key not verified" in r.getMessage()]
    assert len(warnings) == 1 and fake.gateway.fingerprint in warnings[0].getMessage()
    verified = run(attempt(known_hosts=str(good)))
    assert verified.data["ssh_host_key_fingerprint"] == fake.gateway.fingerprint
    with pytest.raises(ProviderConfigError, match="does not match option known_hosts"):
        run(attempt(known_hosts=str(bad)))
    fake.reported_host_keys = [other_key.decode().strip()]  # a forged gateway, as it were
    with pytest.raises(ProviderConfigError, match="does not match the host keys the Daytona API"):
        run(attempt())
    fake.reported_host_keys = []  # an API that reports none: a loud refusal, no token sent
    with pytest.raises(ProviderConfigError, match="cannot verify the SSH gateway's host key") as e:
        run(attempt())
    assert "host_key_policy=accept-any" in str(e.value) and "known_hosts=FILE" in str(e.value)
    assert fake.live() == []


def test_expired_ssh_token_is_refreshed_before_reconnecting(fake: FakeDaytona) -> None:
    fake.token_ttl_s = 1.0
    provider = DaytonaProvider(**provider_options(fake, ssh_token_refresh_margin_s=0.5))

    async def main():
        handle = await provider.create(SandboxSpec(name="hudray-t"), {})
        try:
            first = await provider.ready(handle, 20)
            (token, (_, expires)) = next(iter(fake.tokens.items()))
            assert fake.gateway.drop(handle.sandbox_id) == 1
            await until(lambda: fake.gateway.open_connections(handle.sandbox_id) == 0)
            # Wall-clock wait for a known instant: the token the tunnel was opened with expires.
            await asyncio.sleep(max(0.0, expires - time.time()) + 0.01)
            second = await provider.ready(handle, 20)  # a dead tunnel is rebuilt by ready()
            assert second.url != first.url
            return token
        finally:
            await provider.destroy(handle)
            await provider.close()

    old_token = run(main())
    assert fake.count("POST", r"/ssh-access$") == 2
    assert all(a.outcome == "accepted" for a in fake.gateway.auths)  # never sent a stale one
    assert [a.token for a in fake.gateway.auths].count(old_token) == 1


def test_env_server_that_exits_is_reported_with_its_output(fake: FakeDaytona) -> None:
    fake.server_exit_code = 3
    provider = DaytonaProvider(**provider_options(fake))

    async def main():
        handle = await provider.create(SandboxSpec(name="hudray-x"), {})
        t0 = time.monotonic()
        try:
            with pytest.raises(NotReadyError) as info:
                await provider.ready(handle, 30)
            return info.value, time.monotonic() - t0
        finally:
            await provider.destroy(handle)
            await provider.close()

    error, took = run(main())
    assert "exited with code 3" in str(error) and "fake env: cannot start" in str(error)
    assert took < 10  # noticed from the command's exit, not by waiting out the timeout


def test_options_fail_fast_and_never_show_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
    with pytest.raises(ProviderConfigError, match="DAYTONA_API_KEY"):
        DaytonaProvider()
    monkeypatch.setenv("DAYTONA_API_KEY", "sekrit-key-123")
    monkeypatch.setenv("DAYTONA_API_URL", "http://127.0.0.1:9/api/")
    monkeypatch.setenv("DAYTONA_TARGET", "eu")
    provider = DaytonaProvider()
    assert provider.options.api_url == "http://127.0.0.1:9/api"
    assert provider.options.target == "eu"
    assert "sekrit" not in repr(provider.options) and "sekrit" not in str(provider.__dict__)
    bad = {
        "command": "python -m server --port 8765",
        "auto_stop_minutes": 0,
        "api_url": "app.daytona.io/api",
        "port": 70000,
        "known_hosts": "/nonexistent/known_hosts",
        "flavour": "x",
    }
    for option, value in bad.items():
        with pytest.raises(ProviderConfigError, match=option):
            DaytonaProvider(**{option: value})
    with pytest.raises(ProviderConfigError, match=r"bind 127\.0\.0\.1"):
        DaytonaProvider(command="serve --host 0.0.0.0 --port {port}")


def test_resources_need_an_image_recipe() -> None:
    provider = DaytonaProvider(api_key="k", snapshot="prebuilt")
    spec = SandboxSpec(name="n", resources=Resources(cpu=2))
    with pytest.raises(UnsupportedSpecError, match="image"):
        provider.check_spec(spec)
    provider.check_spec(SandboxSpec(name="n", image="python:3.11", resources=Resources(cpu=2)))
    with pytest.raises(UnsupportedSpecError, match="gpu"):
        provider.check_spec(SandboxSpec(name="n", image="x", resources=Resources(gpu={"count": 1})))


def test_keep_alive_refreshes_the_sandbox_activity_every_third_of_auto_stop(fake) -> None:
    provider = DaytonaProvider(**provider_options(fake), auto_stop_minutes=6)
    assert provider.keepalive_interval_s() == 120.0

    async def main():
        handle = await provider.create(SandboxSpec(name="hudray-k"), {})
        await provider.keep_alive(handle)
        await provider.keep_alive(handle)
        assert fake.activity_refreshes == {handle.sandbox_id: 2}  # the SDK's real call
        await provider.destroy(handle)
        await provider.keep_alive(handle)  # gone: nothing to keep, no error
        await provider.close()

    run(main())
    assert sum(fake.activity_refreshes.values()) == 2
