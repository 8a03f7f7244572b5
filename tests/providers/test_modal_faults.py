"""`modal` provider faults on the loopback fake: the SDK's real error classes injected at each
call point (tests/fakes/modal_fake_state.set_faults), and what each becomes for a rollout.

Retried with back-off: ResourceExhaustedError (past the budget → quota_error), ServiceError
(a lost create reply → re-attach by name). Fail fast, no retries: AuthError and friends →
ProviderConfigError naming what to fix (a fatal row). Sandboxes that never become reachable
→ NotReadyError (infra_error) and are terminated.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from hud_ray.agents import resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, iter_tasks
from providers import NotReadyError, ProviderConfigError, SandboxSpec, get_provider
from providers.modal import ModalProvider
from tests.fakes import modal_fake
from tests.fakes.procs import DEMO_TASKS, REPO


def run(coro):
    return asyncio.run(coro)


def provider(**options) -> ModalProvider:
    return get_provider("modal", **modal_fake.provider_options(**options))


def calls(name: str) -> list[dict]:
    return [c for c in modal_fake.calls() if c["call"] == name]


def one_rollout(p: ModalProvider, template: str = "arith", **config):
    rollout = next(Rollout(task=t) for _, t in iter_tasks(DEMO_TASKS) if t.id == template)
    cfg = RolloutConfig(run_id="modal-fault", deadline_s=30, heartbeat_s=None, **config)
    return run(run_rollout(rollout, resolve_agent("rule"), p, cfg))


@pytest.fixture(autouse=True)
def _fake_cleanup():
    yield
    modal_fake.kill_all()  # safety net only: each test asserts its own leaks


def test_resource_exhausted_then_success():
    modal_fake.set_faults(create=["ResourceExhaustedError", "ResourceExhaustedError"])
    row = one_rollout(provider())
    assert row.status is Status.OK and row.reward == 1.0
    assert len(calls("Sandbox.create")) == 3
    assert len(modal_fake.all_sandboxes()) == 1 and modal_fake.live_sandboxes() == []


@pytest.mark.parametrize("error", ["ServiceError", "InternalError", "ConnectionError",
                                   "SandboxTimeoutError"])
def test_transient_errors_are_retried_everywhere(error):
    """One transient error at each call point (lookup, build, create, list, terminate)."""
    modal_fake.set_faults(lookup=[error], build=[error], create=[error], list=[error],
                          terminate=[error])
    p = provider()

    async def main():
        handle = await p.create(SandboxSpec(name="hudray-transient"), {"k": "v"})
        assert [h.sandbox_id for h in await p.list({"k": "v"})] == [handle.sandbox_id]
        await p.destroy(handle)

    run(main())
    assert modal_fake.live_sandboxes() == []
    for call in ("App.lookup", "Image.build", "Sandbox.create", "Sandbox.list",
                 "Sandbox.terminate"):
        assert len(calls(call)) == 2, call


def test_resource_exhausted_past_the_budget_is_a_quota_error():
    modal_fake.set_faults(create="ResourceExhaustedError")  # sticky
    row = one_rollout(provider(retries=2))
    assert row.status is Status.QUOTA_ERROR and not row.fatal
    assert row.error_type == "QuotaError" and "ResourceExhaustedError" in row.error_message
    assert len(calls("Sandbox.create")) == 3
    assert modal_fake.all_sandboxes() == []


def test_lost_create_reply_reattaches_by_name():
    """The create succeeded but its reply was lost (ServiceError): the retry finds the name
    taken and re-attaches — one sandbox, and the gate accepts the same secret."""
    modal_fake.set_faults(create_lost=["ServiceError"])
    row = one_rollout(provider(), "kv_lookup")
    assert row.status is Status.OK and row.reward == 1.0
    assert len(calls("Sandbox.create")) == 2 and len(calls("Sandbox.from_name")) == 1
    assert len(modal_fake.all_sandboxes()) == 1 and modal_fake.live_sandboxes() == []


def test_orphan_holding_the_name_is_replaced():
    """A crashed run's sandbox holds the name (its secret unknown here): terminate, recreate."""
    spec = SandboxSpec(name="hudray-orphan")

    async def main():
        orphan = await provider().create(spec, {})  # another process, long gone
        p = provider()
        handle = await p.create(spec, {})
        assert handle.sandbox_id != orphan.sandbox_id
        await p.ready(handle, 20)
        assert [r["sandbox_id"] for r in modal_fake.live_sandboxes()] == [handle.sandbox_id]
        await p.destroy(handle)

    run(main())
    assert modal_fake.live_sandboxes() == []


def test_tunnel_never_appearing_is_infra_error_and_sandbox_terminated():
    modal_fake.set_faults(tunnels="never")
    row = one_rollout(provider(), ready_timeout_s=2)
    assert row.status is Status.INFRA_ERROR and not row.fatal
    assert row.error_type == "NotReadyError" and "tunnel" in row.error_message
    (rec,) = modal_fake.all_sandboxes()
    assert rec["returncode"] == 137 and modal_fake.live_sandboxes() == []


def test_auth_error_is_fatal_names_the_token_vars_and_creates_nothing():
    modal_fake.set_faults(lookup="AuthError")
    row = one_rollout(provider())
    assert row.status is Status.INFRA_ERROR and row.fatal
    assert row.error_type == "ProviderConfigError"
    assert "MODAL_TOKEN_ID" in row.error_message and "MODAL_TOKEN_SECRET" in row.error_message
    assert calls("Sandbox.create") == [] and modal_fake.all_sandboxes() == []


@pytest.mark.parametrize("point, error, match", [
    ("create", "PermissionDeniedError", "MODAL_TOKEN_ID"),
    ("create", "InvalidError", "options"),
    ("create", "ConflictError", "ConflictError"),
    ("create", "NotFoundError", "NotFoundError"),
    ("build", "ImageBuildError", "python:3.11-slim"),
    ("build", "NotFoundError", "python:3.11-slim"),
])
def test_fail_fast_errors_are_config_errors_without_retries(point, error, match):
    modal_fake.set_faults(**{point: error})
    p = provider()
    with pytest.raises(ProviderConfigError, match=match):
        run(p.create(SandboxSpec(name="hudray-ff"), {}))
    assert len(calls("Sandbox.create" if point == "create" else "Image.build")) == 1
    assert modal_fake.all_sandboxes() == []


def test_sandbox_that_exits_early_fails_ready_with_its_output():
    p = provider(command="python -c \"print('boom from env'); raise SystemExit(3)\"")

    async def main():
        handle = await p.create(SandboxSpec(name="hudray-dies"), {})
        try:
            with pytest.raises(NotReadyError) as info:
                await p.ready(handle, 20)
            return str(info.value)
        finally:
            await p.destroy(handle)

    message = run(main())
    assert "exited with code" in message and "boom from env" in message


def test_env_that_never_announces_its_port_names_inner_port():
    """With inner_port=0 the gate waits for HUD_SERVE_PORT=; a server that never prints it
    times out with a message naming the option that fixes it."""
    p = provider(command="python -c \"import time; time.sleep(60)\"")

    async def main():
        handle = await p.create(SandboxSpec(name="hudray-silent", startup_timeout_s=1.5), {})
        try:
            with pytest.raises(NotReadyError, match="inner_port") as info:
                await p.ready(handle, 30)
            return str(info.value)
        finally:
            await p.destroy(handle)

    assert "hello" in run(main())
    assert modal_fake.live_sandboxes() == []


def test_ready_in_a_process_without_the_secret_says_so():
    async def main():
        handle = await provider().create(SandboxSpec(name="hudray-nosecret"), {})
        other = provider()
        try:
            with pytest.raises(NotReadyError, match="secret"):
                await other.ready(handle, 5)
        finally:
            await other.destroy(handle)  # any process can destroy by id

    run(main())
    assert modal_fake.live_sandboxes() == []


NO_TOKEN_SCRIPT = """
import asyncio
from providers import SandboxSpec, get_provider
try:
    asyncio.run(get_provider("modal", image="python:3.11-slim").create(SandboxSpec(name="x"), {}))
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_real_sdk_without_credentials_is_a_config_error_naming_the_vars(tmp_path):
    """The REAL modal package, no token anywhere (and a loopback server URL in case it dials):
    one ProviderConfigError naming MODAL_TOKEN_ID / MODAL_TOKEN_SECRET."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "none.toml"),
               MODAL_SERVER_URL="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, "-c", NO_TOKEN_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("ProviderConfigError"), (done.stdout, done.stderr)
    assert "MODAL_TOKEN_ID" in done.stdout and "MODAL_TOKEN_SECRET" in done.stdout
