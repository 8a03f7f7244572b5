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
