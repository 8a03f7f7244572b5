"""Signature drift: every Modal call and keyword the adapter uses exists in the INSTALLED modal.

The adapter is driven through every path that touches the SDK (all options set, every
image kind, create/re-attach/ready/diagnostics/list/reap/destroy) against the fake, which
records each call. Every recorded call must then bind to `inspect.signature` of the real
function, use `.aio` exactly where the real SDK has it, and every SDK call written in the
adapter's source must have been recorded — so a keyword renamed or removed upstream fails
here, not in production.
"""

from __future__ import annotations

import asyncio
import inspect
import re

import modal
import modal.exception
import pytest

from providers import Resources, SandboxSpec, get_provider
from providers.modal import sdk as sdk_policy
from tests.fakes import modal_fake
from tests.fakes.procs import REPO

FAKE = modal_fake.SDK
DEMO_CMD = modal_fake.DEMO_COMMAND
ADAPTER_SOURCE = "\n".join(p.read_text() for p in (REPO / "providers" / "modal").glob("*.py"))


def _provider(**options):
    base = dict(sdk=FAKE, command=DEMO_CMD, backoff_s=0.01, backoff_max_s=0.02,
                workdir=str(REPO), region="us-east", secrets=["named-secret"],
                env={"OPT": "1"}, inbound_cidr_allowlist=["127.0.0.1/32"],
                environment="main", image_secret="registry-creds")
    return get_provider("modal", **{**base, **options})


async def _exercise_every_path() -> None:
    spec = SandboxSpec(name="hudray-drift", env_vars={"TASK": "1"}, env_name="demo",
                       resources=Resources(cpu=1.5, memory_mb=2048, gpu={"type": "T4"}))
    p = _provider(image="python:3.11-slim")
    modal_fake.set_faults(create_lost=["ServiceError"])  # → AlreadyExists → from_name
    handle = await p.create(spec, {"hud-ray-run": "drift"})
    await p.ready(handle, 20)
    assert await p.list({"hud-ray-run": "drift"})
    await _provider(image=None).reap({"hud-ray-run": "drift"})  # from_id + terminate
    await p.destroy(handle)
    for image in ("modal:published-env", "py:tests.fakes.modal_fake:demo_image",
                  str(REPO / "examples" / "demo")):
        q = _provider(image=image)
        await q.destroy(await q.create(SandboxSpec(name="hudray-drift-img"), {}))
    # An orphan holding the name: from_name + terminate(wait=True) + create again.
    r = _provider(image="python:3.11-slim")
    await r.create(SandboxSpec(name="hudray-drift-orphan"), {})
    again = await _provider(image="python:3.11-slim").create(
        SandboxSpec(name="hudray-drift-orphan"), {})
    await r.destroy(again)
    # The clear-text transport (transport=tcp): an unencrypted_ports tunnel.
    tcp = _provider(image="python:3.11-slim", transport="tcp")
    plain = await tcp.create(SandboxSpec(name="hudray-drift-tcp"), {})
    assert (await tcp.ready(plain, 20)).url.startswith("tcp://")
    await tcp.destroy(plain)
    # Diagnostics of a sandbox that exited: poll + stdout/stderr read.
    dying = _provider(image="python:3.11-slim", command="python -c 'raise SystemExit(4)'")
    h = await dying.create(SandboxSpec(name="hudray-drift-dies"), {})
    with pytest.raises(Exception, match="exited with code 4"):
        await dying.ready(h, 20)
    assert "exited with code 4" in await dying.diagnostics(h)
    await dying.destroy(h)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> list[dict]:
    mp = pytest.MonkeyPatch()
    mp.setenv("HUD_RAY_MODAL_FAKE_DIR", str(tmp_path_factory.mktemp("drift")))
    try:
        asyncio.run(_exercise_every_path())
        yield modal_fake.calls()
    finally:
        modal_fake.kill_all()
        mp.undo()


def _real(call: str):
    return modal_fake.REAL[call]


def test_every_recorded_call_binds_to_the_installed_signature(recorded):
    assert recorded
    for entry in recorded:
        real = _real(entry["call"])
        assert hasattr(real, "aio") or not entry["aio"], f"{entry['call']} has no .aio in modal"
        sig = inspect.signature(real)
        params = sig.parameters
        for keyword in entry["kwargs"]:
            assert keyword in params, f"modal.{entry['call']} has no keyword {keyword!r}"
        first = next(iter(params), "")
        placeholders = [None] * (entry["nargs"] + (first in ("self", "cls")))
        sig.bind(*placeholders, **dict.fromkeys(entry["kwargs"]))


def test_sandbox_create_keywords_cover_every_option(recorded):
    creates = [set(c["kwargs"]) for c in recorded if c["call"] == "Sandbox.create"]
    used = set().union(*creates)
    assert used == {"app", "image", "name", "tags", "env", "secrets", "timeout",
                    "encrypted_ports", "unencrypted_ports", "cpu", "memory", "gpu", "workdir",
                    "region", "inbound_cidr_allowlist"}
    assert all("timeout" in c for c in creates)  # never Modal's 300 s default
    assert inspect.signature(modal.Sandbox.create).parameters["timeout"].default == 300


def test_every_sdk_call_in_the_adapter_source_was_exercised(recorded):
    recorded_calls = {c["call"] for c in recorded}
    recorded_methods = {c.split(".")[1] for c in recorded_calls if c.split(".")[1]}
    aio_methods = set(re.findall(r"\.(\w+)\.aio\b", ADAPTER_SOURCE))
    assert aio_methods, "the adapter should use .aio calls"
    assert aio_methods <= recorded_methods, aio_methods - recorded_methods
    sync_calls = {f"{a}.{b}" for a, b in re.findall(r"\bsdk\.(\w+)\.(\w+)\(", ADAPTER_SOURCE)}
    assert sync_calls <= recorded_calls, sync_calls - recorded_calls
    # The lazy constructors are used without .aio (Image.from_id.aio is deprecated upstream).
    assert not any(c["aio"] for c in recorded if c["call"].split(".")[1].startswith("from_")
                   and c["call"].startswith(("Image", "Secret")))


def test_every_error_class_the_policy_names_exists():
    for name in (*sdk_policy.RETRYABLE, *sdk_policy.FATAL, "AlreadyExistsError", "NotFoundError",
                 "SandboxTerminatedError", "Error"):
        assert issubclass(getattr(modal.exception, name), Exception), name
    # No error is both retried and fatal through inheritance.
    for r in sdk_policy.RETRYABLE:
        for f in sdk_policy.FATAL:
            a, b = getattr(modal.exception, r), getattr(modal.exception, f)
            assert not issubclass(a, b) and not issubclass(b, a), (r, f)


def test_tunnel_shape_the_adapter_reads():
    tunnel = modal.Tunnel("tls.example", 443, "tcp.example", 40000)
    assert tunnel.tcp_socket == ("tcp.example", 40000)
    with pytest.raises(modal.exception.InvalidError):
        modal.Tunnel("tls.example", 443, "", 0).tcp_socket  # noqa: B018 - property raises
