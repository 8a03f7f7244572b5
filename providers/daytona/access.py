"""Reaching a Daytona sandbox: start the env server, open the SSH forward, say hello.

The server runs in a background session (`create_session` + `execute_session_command`
with `run_async`), bound to 127.0.0.1 inside the sandbox. The SSH token is refreshed before
it nears expiry whenever a new connection is needed (the gateway checks it only at the
handshake). `ready()` is also the repair path: called again after a tunnel died, it
rebuilds the tunnel without starting a second server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

from ..base import Endpoint, SandboxHandle, SandboxSpec
from ..errors import NotReadyError, ProviderConfigError, QuotaError, SandboxError
from .options import DaytonaOptions
from .retry import Kind, as_sandbox_error, classify, describe
from .tunnel import ProbeFailed, ProbeRejected, Tunnel, hello_probe, parse_ssh_command

SESSION_ID = "hud-ray-env"
# An SSH connection that stays open while hello keeps failing through it is replaced after
# this long (a refused channel is normal while the server boots; a wedged gateway is not).
_RECYCLE_AFTER_S = 5.0


class Live:
    """Runtime state of one sandbox this instance created (never serialised: it holds
    the SSH token)."""

    def __init__(self, sandbox: Any, env_name: str | None) -> None:
        self.sandbox = sandbox
        self.env_name = env_name
        self.cmd_id: str | None = None
        self.target: Any = None  # SshTarget; its username is the token
        self.token_expires_at = 0.0
        self.tunnel: Tunnel | None = None


class AccessMixin:
    """Ready/diagnostics half of DaytonaProvider (which supplies the attributes below)."""

    options: DaytonaOptions
    _live: dict[str, Live]
    _call: Callable[..., Awaitable[Any]]
    _client: Callable[[], Any]
    _find_by_name: Callable[[Any, str], Awaitable[Any]]
    _gateway_keys: list[Any] | None

    async def ready(self, handle: SandboxHandle, timeout_s: float) -> Endpoint:
        o = self.options
        deadline = time.monotonic() + timeout_s
        live = self._live.get(handle.sandbox_id) or await self._attach(handle)
        if live.cmd_id is None:
            await self._start_server(live)
        last_error: BaseException | None = None
        tunnel_since = time.monotonic()
        next_status_check = time.monotonic() + 1.0
        interval = 0.05  # the server usually answers within a second: poll fast, then back off
        while True:
            remaining = deadline - time.monotonic()
            try:
                if live.tunnel is None or not live.tunnel.is_open():
                    await self._close_tunnel(live)
                    live.tunnel = await self._open_tunnel(live, max(0.5, remaining))
                    tunnel_since = time.monotonic()
                if o.probe_hello:
                    await hello_probe("127.0.0.1", live.tunnel.local_port,
                                      min(5.0, max(0.5, remaining)))
                handle.data["ssh_host_key_fingerprint"] = live.tunnel.fingerprint
                return Endpoint(url=f"tcp://127.0.0.1:{live.tunnel.local_port}")
            except ProbeRejected as exc:
                raise NotReadyError(f"env server answered hello wrongly: {exc}") from None
            except ProbeFailed as exc:
                last_error = exc
                if time.monotonic() - tunnel_since >= _RECYCLE_AFTER_S:
                    await self._close_tunnel(live)
            except (ProviderConfigError, SandboxError, QuotaError):
                raise
            except Exception as exc:
                last_error = exc
                if type(exc).__name__ == "PermissionDenied":
                    live.target = None  # token refused (expired or revoked): get a new one
            if time.monotonic() >= next_status_check:
                next_status_check = time.monotonic() + 1.0
                await self._fail_if_server_exited(live, last_error)
            if time.monotonic() >= deadline:
                raise NotReadyError(
                    f"sandbox {handle.sandbox_id}: env server not ready through the SSH tunnel "
                    f"after {timeout_s:.1f}s (last: {describe(last_error)}); output:\n"
                    f"{await self._tail(live)}"
                )
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 2, o.ready_retry_interval_s)

    async def _attach(self, handle: SandboxHandle) -> Live:
        """A handle this instance did not create (another worker's warm-ahead, a restart)."""
        client = self._client()
        sandbox = await self._find_by_name(client, handle.sandbox_id)
        if sandbox is None:
            raise SandboxError(f"provider 'daytona': sandbox {handle.sandbox_id} is gone")
        live = self._live.setdefault(handle.sandbox_id, Live(sandbox, None))
        return live

    async def _start_server(self, live: Live) -> None:
        from daytona import SessionExecuteRequest

        process = live.sandbox.process
        try:
            await self._call("create session", lambda: process.create_session(SESSION_ID))
        except Exception as exc:
            if classify(exc) is not Kind.CONFLICT:  # 409: a session from an earlier try
                raise as_sandbox_error("create session", exc) from None
        command = self.options.render_command(
            SandboxSpec(name=live.sandbox.name, env_name=live.env_name)
        )
        request = SessionExecuteRequest(command=command, run_async=True)
        try:
            response = await self._call(
                "start env server",
                lambda: process.execute_session_command(SESSION_ID, request),
            )
        except Exception as exc:
            raise as_sandbox_error("start env server", exc) from None
        live.cmd_id = response.cmd_id

    async def _open_tunnel(self, live: Live, timeout_s: float) -> Tunnel:
        o = self.options
        if live.target is None or live.token_expires_at - time.time() < o.ssh_token_refresh_margin_s:
            access = await self._call(
                "create SSH access",
                lambda: live.sandbox.create_ssh_access(expires_in_minutes=o.ssh_token_minutes),
            )
            try:
                live.target = parse_ssh_command(access.ssh_command, access.token)
            except ValueError as exc:
                raise SandboxError(f"provider 'daytona': {exc}") from None
            expires = access.expires_at
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            live.token_expires_at = expires.timestamp()
        import asyncssh

        known_hosts, source = await self._host_key_check()
        try:
            return await Tunnel.open(
                live.target, o.port, known_hosts=known_hosts,
                connect_timeout_s=min(o.ssh_connect_timeout_s, timeout_s),
                keepalive_s=o.ssh_keepalive_s,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise ProviderConfigError(
                f"provider 'daytona': SSH gateway {live.target.host}:{live.target.port} host key "
                f"does not match {source}: {exc} (refusing to send the access token to it)"
            ) from None

    async def _host_key_check(self) -> tuple[Any, str]:
        """What asyncssh checks the gateway's host key against, and its name for errors:
        the known_hosts file if given; else the keys the Daytona API reports (fetched over
        its TLS, once per instance); no check only when the user chose accept-any. Without
        either, refuse: the SSH username is the access token, a forged gateway would get it."""
        o = self.options
        if o.known_hosts:
            return o.known_hosts, f"option known_hosts={o.known_hosts!r}"
        if o.host_key_policy == "accept-any":
            return None, "nothing (host_key_policy=accept-any)"
        if self._gateway_keys is None:
            self._gateway_keys = await self._fetch_gateway_keys()
        if not self._gateway_keys:
            raise ProviderConfigError(
                f"provider 'daytona': cannot verify the SSH gateway's host key: the API at "
                f"{o.api_url or 'the default URL'} reports none (GET /config sshGatewayHostKeys) "
                "and option known_hosts is not set; the SSH username is your access token, so "
                "hud-ray will not connect unverified — set --provider-opt known_hosts=FILE, or "
                "--provider-opt host_key_policy=accept-any to accept any key"
            )
        return (self._gateway_keys, [], []), "the host keys the Daytona API reports"

    async def _fetch_gateway_keys(self) -> list[Any]:
        import asyncssh

        api = getattr(self._client(), "_config_api", None)  # the SDK's own ConfigApi
        if api is None:
            return []
        response = await self._call(
            "read the SSH gateway's host keys",
            lambda: api.config_controller_get_config_without_preload_content(),
        )
        if response.status >= 500:
            raise SandboxError(f"provider 'daytona': GET /config answered {response.status}")
        try:
            lines = json.loads(await response.read() or b"{}").get("sshGatewayHostKeys") or []
        except (ValueError, AttributeError):
            return []
        keys = []
        for line in lines:
            with contextlib.suppress(asyncssh.KeyImportError, ValueError, TypeError):
                keys.append(asyncssh.import_public_key(line))
        return keys

    async def _fail_if_server_exited(self, live: Live, last_error: BaseException | None) -> None:
        code = None
        with contextlib.suppress(Exception):
            command = await asyncio.wait_for(
                live.sandbox.process.get_session_command(SESSION_ID, live.cmd_id), 5.0
            )
            code = command.exit_code
        if code is not None:
            raise NotReadyError(
                f"sandbox {live.sandbox.id}: env server exited with code {code} before it "
                f"answered hello (last: {describe(last_error)}); output:\n{await self._tail(live)}"
            )

    async def _tail(self, live: Live) -> str:
        if live.cmd_id is None:
            return "(env server not started)"
        try:
            logs = await asyncio.wait_for(
                live.sandbox.process.get_session_command_logs(SESSION_ID, live.cmd_id), 5.0
            )
        except Exception as exc:
            return f"(no output: {describe(exc)})"
        lines = (logs.output or "").splitlines()[-self.options.output_lines :]
        return "\n".join(lines) or "(no output)"

    async def diagnostics(self, handle: SandboxHandle) -> str:
        live = self._live.get(handle.sandbox_id)
        return await self._tail(live) if live else ""

    async def _close_tunnel(self, live: Live) -> None:
        tunnel, live.tunnel = live.tunnel, None
        if tunnel is not None:
            await tunnel.close()
