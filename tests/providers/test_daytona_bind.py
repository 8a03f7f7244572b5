"""Daytona's `command` must not bind every interface: addresses parsed, not matched as
text (issue 16 item 6) — `::` and `[::]:PORT` are refused, 127.0.0.1 and paths are not."""

from __future__ import annotations

import pytest

from providers import ProviderConfigError
from providers.daytona import DaytonaProvider
from tests.test_bad_inputs_cli import DEMO_TASKS, run_error


@pytest.mark.parametrize("command, named", [
    ("serve --host 0.0.0.0 --port {port}", "0.0.0.0"),
    ("serve --host :: --port {port}", "::"),
    ("serve --host=[::] --port {port}", "--host=[::]"),
    ("serve --bind [::]:{port}", "[::]:{port}"),
    ("serve --bind 0.0.0.0:{port}", "0.0.0.0:{port}"),
    ("HOST=0:0:0:0:0:0:0:0 serve --port {port}", "HOST=0:0:0:0:0:0:0:0"),
    ("cd /app && ( serve --host '::' --port {port} )", "::"),
])
def test_every_spelling_of_all_interfaces_is_refused(command, named):
    with pytest.raises(ProviderConfigError) as caught:
        DaytonaProvider(api_key="k", command=command)
    message = str(caught.value)
    assert f"must not bind {named} (every interface)" in message, message
    assert "bind 127.0.0.1" in message


@pytest.mark.parametrize("command", [
    "serve --host 127.0.0.1 --port {port}",
    "serve --host ::1 --port {port}",
    "cd /srv/0.0.0.0-data && serve --host localhost --port {port}",
    "serve --host 10.0.0.1 --port {port} --label a::b",
])
def test_loopback_and_lookalikes_are_allowed(command):
    assert DaytonaProvider(api_key="k", command=command).options.command == command


def test_the_cli_names_the_address(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "daytona",
              "--provider-opt", "command=serve --host :: --port {port}",
              named=("provider 'daytona'", "command", "must not bind :: (every interface)"))
