"""The adapter against the INSTALLED Daytona SDK and asyncssh: every keyword the provider
passes exists in the real signatures and models (read from our own source with `ast`, so a
new call is checked without editing this test), plus the pure helpers (ssh_command parsing,
error classification, Retry-After, options)."""

from __future__ import annotations

import ast
import dataclasses
import email.utils
import inspect
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from daytona import (
    AsyncDaytona,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    DaytonaConfig,
    ListSandboxesQuery,
    Resources,
    SessionExecuteRequest,
)
from daytona._async.process import AsyncProcess
from daytona._async.sandbox import AsyncSandbox
from daytona._async.snapshot import AsyncSnapshotService
from daytona.common.errors import (
    DaytonaConnectionError,
    DaytonaTimeoutError,
    create_daytona_error,
)
from daytona.common.process import SessionCommandLogsResponse, SessionExecuteResponse
from daytona.common.snapshot import Snapshot
from daytona_api_client_async.models import SshAccessDto
from daytona_toolbox_api_client_async.models import Command

from providers import SandboxSpec
from providers.base import Resources as SpecResources
from providers.daytona.options import DaytonaOptions, recipe_for
from providers.daytona.retry import Backoff, Kind, classify, retry_after_s
from providers.daytona.tunnel import parse_ssh_command

PACKAGE = Path(__file__).resolve().parents[2] / "providers" / "daytona"

# Call expression in our source → what it really calls. Models are checked by field name.
MODELS: dict[str, Any] = {
    "DaytonaConfig": DaytonaConfig,
    "CreateSandboxFromSnapshotParams": CreateSandboxFromSnapshotParams,
    "CreateSnapshotParams": CreateSnapshotParams,
    "SessionExecuteRequest": SessionExecuteRequest,
}
CALLABLES: dict[str, Any] = {
    "Resources": Resources,
    "ListSandboxesQuery": ListSandboxesQuery,
    "client.create": AsyncDaytona.create,
    "client.get": AsyncDaytona.get,
    "client.list": AsyncDaytona.list,
    "self._sdk.close": AsyncDaytona.close,
    "client.close": AsyncDaytona.close,
    "client.snapshot.create": AsyncSnapshotService.create,
    "client.snapshot.get": AsyncSnapshotService.get,
    "client.snapshot.activate": AsyncSnapshotService.activate,
    "target.delete": AsyncSandbox.delete,
    "sandbox.wait_for_sandbox_start": AsyncSandbox.wait_for_sandbox_start,
    "live.sandbox.create_ssh_access": AsyncSandbox.create_ssh_access,
    "process.create_session": AsyncProcess.create_session,
    "process.execute_session_command": AsyncProcess.execute_session_command,
    "live.sandbox.process.get_session_command": AsyncProcess.get_session_command,
    "live.sandbox.process.get_session_command_logs": AsyncProcess.get_session_command_logs,
    "conn.forward_local_port": asyncssh.SSHClientConnection.forward_local_port,
    "conn.get_server_host_key": asyncssh.SSHClientConnection.get_server_host_key,
    "conn.close": asyncssh.SSHClientConnection.close,
    "self._conn.close": asyncssh.SSHClientConnection.close,
    "self._conn.is_closed": asyncssh.SSHClientConnection.is_closed,
    "self._conn.wait_closed": asyncssh.SSHClientConnection.wait_closed,
    "key.get_fingerprint": asyncssh.SSHKey.get_fingerprint,
    "asyncssh.import_public_key": asyncssh.import_public_key,
}
# Receivers that hold SDK objects: a call on one of them must be in the tables above.
SDK_RECEIVERS = ("client.", "sandbox.", "live.sandbox.", "process.", "target.", "conn.",
                 "self._conn.", "self._sdk.", "asyncssh.", "key.")


def sdk_calls() -> list[tuple[str, str, ast.Call]]:
    calls = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                calls.append((path.name, ast.unparse(node.func), node))
    return calls


def test_every_keyword_we_pass_exists_in_the_installed_sdk() -> None:
    checked: set[str] = set()
    for filename, func, call in sdk_calls():
        keywords = [k.arg for k in call.keywords]
        sdk = func in MODELS or func in CALLABLES or func.startswith(SDK_RECEIVERS)
        assert not (sdk and None in keywords), f"{filename}: **kwargs into {func} is unchecked"
        where = f"{filename}: {func}({', '.join(map(str, keywords))})"
        if func in MODELS:
            fields = MODELS[func].model_fields
            unknown = [k for k in keywords if k not in fields]
            assert not unknown, f"{where}: {MODELS[func].__name__} has no field(s) {unknown}"
            checked.add(func)
        elif func in CALLABLES:
            target = CALLABLES[func]
            owner_bound = inspect.isfunction(target) and "." in target.__qualname__
            args = [object()] * (len(call.args) + (1 if owner_bound else 0))
            try:
                inspect.signature(target).bind(*args, **dict.fromkeys(keywords))
            except TypeError as exc:
                pytest.fail(f"{where}: does not fit {target.__qualname__}{inspect.signature(target)}: {exc}")
            checked.add(func)
        elif func == "asyncssh.connect":
            accepted = set(inspect.signature(asyncssh.SSHClientConnectionOptions.prepare).parameters)
            accepted |= set(inspect.signature(asyncssh.connect).parameters)
            unknown = [k for k in keywords if k not in accepted]
            assert not unknown, f"{where}: asyncssh rejects {unknown}"
            checked.add(func)
        else:
            assert not func.startswith(SDK_RECEIVERS), f"{where}: an SDK call this test misses"
    # The tables describe the code as it is: a renamed receiver would silently skip checks.
    assert checked == set(MODELS) | set(CALLABLES) | {"asyncssh.connect"}


def test_response_fields_we_read_exist() -> None:
    def returns(func: Any) -> str:
        return str(inspect.signature(func).return_annotation)

    assert "SshAccessDto" in returns(AsyncSandbox.create_ssh_access)
    assert {"token", "ssh_command", "expires_at"} <= set(SshAccessDto.model_fields)
    assert "SessionExecuteResponse" in returns(AsyncProcess.execute_session_command)
    assert "cmd_id" in SessionExecuteResponse.model_fields
    assert "Command" in returns(AsyncProcess.get_session_command)
    assert "exit_code" in Command.model_fields
    assert "SessionCommandLogsResponse" in returns(AsyncProcess.get_session_command_logs)
    assert "output" in {f.name for f in dataclasses.fields(SessionCommandLogsResponse)} \
        if dataclasses.is_dataclass(SessionCommandLogsResponse) \
        else "output" in inspect.signature(SessionCommandLogsResponse).parameters
    assert "AsyncSandbox" in returns(AsyncDaytona.create)
    assert {"id", "name", "state", "labels", "target"} <= set(AsyncSandbox.model_fields)
    assert "Snapshot" in returns(AsyncSnapshotService.get)
    assert {"state", "error_reason"} <= set(Snapshot.model_fields)
    assert hasattr(DaytonaTimeoutError, "sandbox_id")
    error = create_daytona_error("x", status_code=429, headers={"Retry-After": "3"})
    assert (error.status_code, error.headers) == (429, {"Retry-After": "3"})
    assert issubclass(asyncssh.HostKeyNotVerifiable, Exception)
    assert asyncssh.PermissionDenied.__name__ == "PermissionDenied"  # matched by name


def test_parse_ssh_command_with_a_token_that_looks_like_an_option() -> None:
    target = parse_ssh_command("ssh -p 2222 -pX7@gw.example", "-pX7")
    assert (target.host, target.port, target.username) == ("gw.example", 2222, "-pX7")


@pytest.mark.parametrize(
    ("command", "host", "port", "user"),
    [
        ("ssh TOKEN@ssh.app.daytona.io", "ssh.app.daytona.io", 22, "TOKEN"),
        ("ssh -p 2222 TOKEN@localhost", "localhost", 2222, "TOKEN"),
        ("ssh TOKEN@gw.example -p 2200", "gw.example", 2200, "TOKEN"),
        ("/usr/bin/ssh -p2222 -o StrictHostKeyChecking=no TOKEN@h", "h", 2222, "TOKEN"),
        ("ssh -o Port=2022 -l TOKEN h", "h", 2022, "TOKEN"),
        ("ssh ssh://TOKEN@h:2201", "h", 2201, "TOKEN"),
        ("ssh h", "h", 22, "from-access"),
        ("ssh TOKEN@h true -p 1", "h", 22, "TOKEN"),  # after the command: not options
    ],
)
def test_parse_ssh_command(command: str, host: str, port: int, user: str) -> None:
    target = parse_ssh_command(command, "from-access")
    assert (target.host, target.port, target.username) == (host, port, user)
    assert target.username not in repr(target)  # the username is the access token


@pytest.mark.parametrize("command", ["ssh", "ssh -p 99999 t@h", "ssh 'unbalanced"])
def test_parse_ssh_command_rejects_nonsense(command: str) -> None:
    with pytest.raises(ValueError, match="ssh_command"):
        parse_ssh_command(command, "t")


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (429, "Too Many Requests", Kind.QUOTA),
        (403, "Total memory limit exceeded. Maximum allowed: 10GiB.", Kind.QUOTA),
        (400, "Sandbox resource limit reached (16), please try again later.", Kind.QUOTA),
        (401, "Unauthorized", Kind.CONFIG),
        (403, "Forbidden", Kind.CONFIG),
        (400, "Invalid snapshot", Kind.CONFIG),
        (404, "not found", Kind.NOT_FOUND),
        (409, "exists", Kind.CONFLICT),
        (500, "boom", Kind.RETRY),
        (502, "bad gateway", Kind.RETRY),
        (503, "unavailable", Kind.RETRY),
        (504, "gateway timeout", Kind.RETRY),
    ],
)
def test_classify_real_sdk_errors(status: int, message: str, kind: Kind) -> None:
    assert classify(create_daytona_error(message, status_code=status)) is kind


def test_classify_transport_and_timeouts() -> None:
    assert classify(DaytonaConnectionError("refused")) is Kind.RETRY
    assert classify(DaytonaTimeoutError("create took too long")) is Kind.TIMEOUT
    assert classify(ConnectionResetError()) is Kind.RETRY


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_s(create_daytona_error("x", 429, headers={"retry-after": "2.5"})) == 2.5
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_s(create_daytona_error("x", 429, headers={"Retry-After": date})) <= 30
    assert retry_after_s(create_daytona_error("x", 429)) is None
    backoff = Backoff(1.0, 8.0)
    assert all(0.5 <= backoff.delay(1, None) <= 1.0 for _ in range(50))
    assert all(4.0 <= backoff.delay(9, None) <= 8.0 for _ in range(50))
    assert backoff.delay(1, 20.0) == 20.0  # a server's Retry-After is a floor


def test_ttl_command_and_recipe() -> None:
    options = DaytonaOptions(api_key="k", image="img:1", resources={"cpu": 1, "memory_gib": 2})
    spec = SandboxSpec(name="n", lifetime_s=601, env_name="blank")
    assert options.ttl_minutes(spec) == 11
    assert options.ttl_minutes(SandboxSpec(name="n", lifetime_s=1)) == 1
    assert options.render_command(spec).startswith("cd /app && ( if [ -x .venv/bin/python ]")
    assert options.render_command(spec).endswith("--port 8765 )")
    recipe = recipe_for(options, spec)
    assert recipe is not None and (recipe.cpu, recipe.memory_gib) == (1, 2)
    bigger = recipe_for(options, SandboxSpec(name="n", resources=SpecResources(cpu=1.5,
                                                                               memory_mb=3000)))
    assert bigger is not None and (bigger.cpu, bigger.memory_gib) == (2, 3)
    assert bigger.snapshot_name("p") != recipe.snapshot_name("p")
    assert recipe.snapshot_name(None) == recipe_for(options, spec).snapshot_name(None)  # stable
    assert recipe_for(DaytonaOptions(api_key="k", snapshot="s"), spec) is None
