"""Modal's gate port: closed to all but the cluster's egress when it is declared
(HUD_RAY_EGRESS_CIDRS), CIDRs checked at plan time (issue 16 item 6). Against the fake."""

from __future__ import annotations

import asyncio

import pytest

from providers import ProviderConfigError, SandboxSpec, get_provider
from tests.fakes import modal_fake
from tests.test_bad_inputs_cli import DEMO_TASKS, cli_env, run_error


def test_declared_egress_turns_the_allowlist_on(monkeypatch):
    monkeypatch.setenv("HUD_RAY_EGRESS_CIDRS", "127.0.0.1, 10.1.0.0/16")
    provider = get_provider("modal", **modal_fake.provider_options())
    assert provider.options.inbound_cidr_allowlist == ["127.0.0.1/32", "10.1.0.0/16"]

    async def main():
        handle = await provider.create(SandboxSpec(name="hudray-cidr"), {})
        await provider.destroy(handle)

    try:
        asyncio.run(main())
    finally:
        modal_fake.kill_all()
    (rec,) = [r for r in modal_fake.all_sandboxes() if r["name"] == "hudray-cidr"]
    assert rec["options"]["inbound_cidr_allowlist"] == ["127.0.0.1/32", "10.1.0.0/16"]


def test_an_explicit_allowlist_wins_and_none_declared_means_none(monkeypatch):
    monkeypatch.setenv("HUD_RAY_EGRESS_CIDRS", "127.0.0.1")
    explicit = get_provider("modal", **modal_fake.provider_options(
        inbound_cidr_allowlist=["192.0.2.0/24"]))
    assert explicit.options.inbound_cidr_allowlist == ["192.0.2.0/24"]
    monkeypatch.delenv("HUD_RAY_EGRESS_CIDRS")
    assert get_provider("modal", **modal_fake.provider_options()).options \
        .inbound_cidr_allowlist is None


@pytest.mark.parametrize("setting", ["option", "env"])
def test_a_bad_cidr_is_one_line_at_plan_time(tmp_path, setting):
    env = cli_env()
    args = ["--agent", "rule", "--provider", "modal", "--provider-opt", f"sdk={modal_fake.SDK}",
            "--provider-opt", "image=python:3.11-slim"]
    if setting == "option":
        args += ["--provider-opt", 'inbound_cidr_allowlist=["10.0.0.0/8", "office"]']
    else:
        env["HUD_RAY_EGRESS_CIDRS"] = "10.0.0.0/8,office"
    line = run_error(tmp_path, str(DEMO_TASKS), *args, env=env,
                     named=("provider 'modal'", "'office' is not a CIDR"))
    assert ("HUD_RAY_EGRESS_CIDRS" in line) == (setting == "env")


def test_provider_config_error_class():
    with pytest.raises(ProviderConfigError, match="not a CIDR"):
        get_provider("modal", **modal_fake.provider_options(inbound_cidr_allowlist=["x"]))


# --- TLS for the gate's channel (transport=tls, the default) ------------------------------


def _ready(provider, name: str):
    from hud_ray.wire import EnvClient

    async def main():
        handle = await provider.create(SandboxSpec(name=name), {})
        try:
            endpoint = await provider.ready(handle, 20)
            client = await EnvClient.connect(endpoint.url, preamble=endpoint.preamble,
                                             heartbeat_s=None, ready_timeout_s=10)
            await client.bye()
            return endpoint
        finally:
            await provider.destroy(handle)

    try:
        return asyncio.run(main())
    finally:
        modal_fake.kill_all()


def test_the_channel_is_tls_by_default_and_the_public_port_speaks_nothing_else():
    import socket
    import ssl

    endpoint = _ready(get_provider("modal", **modal_fake.provider_options()), "hudray-tls")
    assert endpoint.url.startswith("tls://localhost:")
    host, port = endpoint.host_port
    (rec,) = [r for r in modal_fake.all_sandboxes() if r["name"] == "hudray-tls"]
    assert rec["tls_ports"] == [8765] and rec["ports"] == []
    # A second sandbox, left running, to talk to its edge in clear: it answers no JSON.
    provider = get_provider("modal", **modal_fake.provider_options())

    async def open_one():
        handle = await provider.create(SandboxSpec(name="hudray-tls-raw"), {})
        return handle, await provider.ready(handle, 20)

    handle, live = asyncio.run(open_one())
    try:
        host, port = live.host_port
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(live.preamble + b'{"jsonrpc":"2.0","id":1,"method":"hello"}\n')
            raw.settimeout(5)
            try:
                reply = raw.recv(4096)
            except (ConnectionResetError, TimeoutError):
                reply = b""
        assert b"session_id" not in reply  # a TLS alert or nothing, never the env
        context = ssl.create_default_context(cafile=modal_fake.ensure_cert()[0])
        with socket.create_connection((host, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(live.preamble + b'{"jsonrpc":"2.0","id":1,"method":"hello"}\n')
            assert b"session_id" in tls.recv(65536)  # the same bytes inside TLS: the env
    finally:
        asyncio.run(provider.destroy(handle))
        modal_fake.kill_all()


def test_a_certificate_that_does_not_verify_fails_fast_naming_tls(monkeypatch):
    import time

    monkeypatch.setenv("HUD_RAY_TLS_CA_FILE", "")  # the fake's edge is not trusted now
    provider = get_provider("modal", **modal_fake.provider_options())
    t0 = time.monotonic()
    with pytest.raises(Exception, match=r"TLS to localhost:\d+: .*(self.signed|verify)"):
        _ready(provider, "hudray-tls-bad")
    assert time.monotonic() - t0 < 15  # not the startup budget's worth of retries


def test_transport_tcp_is_the_clear_text_opt_out():
    endpoint = _ready(get_provider("modal", **modal_fake.provider_options(transport="tcp")),
                      "hudray-tcp")
    assert endpoint.url.startswith("tcp://127.0.0.1:")
