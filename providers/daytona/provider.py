"""`daytona`: one Daytona sandbox per rollout, reached through an SSH local forward.

    create  → snapshot resolved once per process (built from `image` when asked), then
              `AsyncDaytona.create` with a deterministic name, run/rollout/owner labels, a TTL
              hard cap and an idle auto-stop; after any failed or timed-out create the name
              is looked up before creating again (create is not idempotent).
    ready   → env server started in a background session (bound to 127.0.0.1), SSH token
              from `create_ssh_access`, asyncssh forward, wire `hello` through it — retried,
              because the sandbox's SSH daemon can lag behind "started".
    destroy → forward and SSH connection closed, sandbox deleted and waited for; shielded.

The SDK is imported lazily and its client built inside the running event loop, once per
provider instance (a new loop gets a new client: aiohttp sessions belong to one loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any, TypeVar

from ..base import Capabilities, Endpoint, Provider, SandboxHandle, SandboxSpec, shielded
from ..errors import (
    NotReadyError,
    ProviderConfigError,
    QuotaError,
    SandboxError,
    UnsupportedSpecError,
)
from .options import DaytonaOptions, recipe_for
from .retry import (
    Backoff,
    Kind,
    call_with_retries,
    classify,
    config_error,
    describe,
    exhausted,
    retry_after_s,
)
from .snapshots import resolve_snapshot
from .tunnel import ProbeFailed, ProbeRejected, Tunnel, hello_probe, parse_ssh_command

log = logging.getLogger("providers.daytona")
T = TypeVar("T")

SESSION_ID = "hud-ray-env"
_DEAD_STATES = {"error", "build_failed", "stopped", "stopping", "archived", "archiving",
                "destroying", "destroyed"}
# An SSH connection that stays open while hello keeps failing through it is replaced after
# this long (a refused channel is normal while the server boots; a wedged gateway is not).
_RECYCLE_AFTER_S = 5.0


def _state(obj: Any) -> str:
    state = getattr(obj, "state", None)
    return str(getattr(state, "value", state) or "")


class _Live:
    """Runtime state of one sandbox this instance created (never serialised: it holds
    the SSH token)."""

    def __init__(self, sandbox: Any, env_name: str | None) -> None:
        self.sandbox = sandbox
        self.env_name = env_name
        self.cmd_id: str | None = None
        self.target: Any = None  # SshTarget; its username is the token
        self.token_expires_at = 0.0
        self.tunnel: Tunnel | None = None


class DaytonaProvider(Provider):
    name = "daytona"
    Options = DaytonaOptions
    default_create_rate = 5.0
    default_live_cap = 10  # Daytona's free tier; raise it with the account's limits
    capabilities = Capabilities(
        images=True, resources={"cpu", "memory_mb", "storage_mb"}, gpu=False, warm_ahead=True
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options: DaytonaOptions
        if importlib.util.find_spec("daytona") is None:
            raise ProviderConfigError(
                "provider 'daytona' needs the [daytona] extra: pip install 'hud-ray[daytona]'"
            )
        if self.options.api_key is None:
            raise ProviderConfigError(
                "provider 'daytona': no API key: set DAYTONA_API_KEY (or --provider-opt api_key=...)"
            )
        self._backoff = Backoff(self.options.backoff_base_s, self.options.backoff_max_s)
        self._sdk: Any = None
        self._sdk_loop: asyncio.AbstractEventLoop | None = None
        self._live: dict[str, _Live] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # --- plan time -------------------------------------------------------------------
    def check_spec(self, spec: SandboxSpec) -> None:
        super().check_spec(spec)
        wanted = spec.resources
        if wanted is not None and recipe_for(self.options, spec) is None and any(
            getattr(wanted, f) is not None for f in ("cpu", "memory_mb", "storage_mb")
        ):
            raise UnsupportedSpecError(
                "provider 'daytona' sets resources per snapshot: runtime_config.resources needs "
                "an image to build from (runtime_config.image or --provider-opt image=...)"
            )

    # --- SDK plumbing ----------------------------------------------------------------
    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._sdk is None or self._sdk_loop is not loop:
            from daytona import AsyncDaytona, DaytonaConfig

            assert self.options.api_key is not None
            # Explicit config: values other than the URL would otherwise also be read from
            # a `.env` in the worker's working directory.
            self._sdk = AsyncDaytona(
                DaytonaConfig(
                    api_key=self.options.api_key.get_secret_value(),
                    api_url=self.options.api_url,
                    target=self.options.target,
                )
            )
            self._sdk_loop = loop
        return self._sdk

    async def _call(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        retry_on: tuple[Kind, ...] = (Kind.RETRY, Kind.QUOTA),
    ) -> T:
        o = self.options
        return await call_with_retries(
            what, call, max_retries=o.max_retries, backoff=self._backoff,
            retry_after_max_s=o.retry_after_max_s, api_url=o.api_url, target=o.target,
            retry_on=retry_on,
        )

    # --- create ----------------------------------------------------------------------
    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        from daytona import CreateSandboxFromSnapshotParams

        client = self._client()
        o = self.options
        try:
            snapshot = await resolve_snapshot(client, o, spec, self._call)
        except (ProviderConfigError, SandboxError):
            raise
        except Exception as exc:
            raise SandboxError(f"provider 'daytona': snapshot: {describe(exc)}") from None
        ttl = o.ttl_minutes(spec)

        def params() -> Any:  # fresh each attempt: the SDK adds a label to the one it gets
            return CreateSandboxFromSnapshotParams(
                name=spec.name,
                snapshot=snapshot,
                labels={**o.labels, **labels},
                env_vars={**o.env_vars, **spec.env_vars},
                auto_stop_interval=o.auto_stop_minutes,
                ephemeral=o.ephemeral,
                ttl_minutes=ttl,
                target=o.target,
                public=False,
            )

        try:
            sandbox = await self._create_sandbox(client, spec.name, params)
        except asyncio.CancelledError:
            # The create may have gone through: find it by name and delete it, off-path.
            self._spawn(self._delete_by_name(client, spec.name))
            raise
        self._live[sandbox.id] = _Live(sandbox, spec.env_name)
        return SandboxHandle(
            provider=self.name, sandbox_id=sandbox.id, name=spec.name, labels=labels,
            data={"snapshot": snapshot, "target": getattr(sandbox, "target", None),
                  "ttl_minutes": ttl},
        )

    async def _create_sandbox(self, client: Any, name: str, params: Callable[[], Any]) -> Any:
        o = self.options
        condemned: set[str] = set()
        attempt, look_first = 0, False
        while True:
            if look_first:
                found = await self._find_by_name(client, name)
                if found is not None:
                    adopted = await self._adopt(found, condemned)
                    if adopted is not None:
                        log.info("daytona: adopted sandbox %s (%s) after a failed create",
                                 found.id, name)
                        return adopted
            try:
                return await client.create(params(), timeout=o.create_timeout_s)
            except Exception as exc:
                kind = classify(exc)
                if kind is Kind.CONFIG:
                    raise config_error(exc, o.api_url, o.target) from None
                if kind is Kind.NOT_FOUND:
                    raise ProviderConfigError(
                        f"provider 'daytona': create answered 404 ({describe(exc)}): check "
                        f"DAYTONA_API_URL={o.api_url!r} and option snapshot"
                    ) from None
                timed_out_id = getattr(exc, "sandbox_id", None)
                if timed_out_id:  # created, then timed out starting: it must not live on
                    condemned.add(timed_out_id)
                    await self._delete_quietly(client, timed_out_id)
                last_exc, last_kind = exc, kind
            attempt += 1
            wait = retry_after_s(last_exc)
            if attempt > o.max_retries or (wait is not None and wait > o.retry_after_max_s):
                final = last_kind if last_kind in (Kind.QUOTA, Kind.RETRY) else Kind.FAILED
                raise exhausted(f"create sandbox {name!r}", last_exc, final, attempt, o.api_url)
            # A 429 was refused before anything was made; anything else may have made one.
            look_first = last_kind is not Kind.QUOTA
            delay = self._backoff.delay(attempt, wait)
            log.info("daytona: create %s: %s; retry %d/%d in %.2fs", name, describe(last_exc),
                     attempt, o.max_retries, delay)
            await asyncio.sleep(delay)

    async def _find_by_name(self, client: Any, name: str) -> Any | None:
        try:
            return await self._call(f"get sandbox {name!r}", lambda: client.get(name))
        except (ProviderConfigError, SandboxError):
            raise
        except Exception as exc:
            if classify(exc) is Kind.NOT_FOUND:
                return None
            raise SandboxError(f"provider 'daytona': get {name!r}: {describe(exc)}") from None

    async def _adopt(self, sandbox: Any, condemned: set[str]) -> Any | None:
        """Use a sandbox found under our name, or delete it and return None."""
        state = _state(sandbox)
        if sandbox.id not in condemned and state == "started":
            return sandbox
        if sandbox.id not in condemned and state not in _DEAD_STATES:
            try:  # still creating/starting: give it the create timeout
                await sandbox.wait_for_sandbox_start(timeout=self.options.create_timeout_s)
                return sandbox
            except Exception as exc:
                log.info("daytona: sandbox %s never started: %s", sandbox.id, describe(exc))
        condemned.add(sandbox.id)
        await self._delete_quietly(self._client(), sandbox.id)
        return None

    # --- ready -----------------------------------------------------------------------
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

    async def _attach(self, handle: SandboxHandle) -> _Live:
        """A handle this instance did not create (another worker's warm-ahead, a restart)."""
        client = self._client()
        sandbox = await self._find_by_name(client, handle.sandbox_id)
        if sandbox is None:
            raise SandboxError(f"provider 'daytona': sandbox {handle.sandbox_id} is gone")
        live = self._live.setdefault(handle.sandbox_id, _Live(sandbox, None))
        return live

    async def _start_server(self, live: _Live) -> None:
        from daytona import SessionExecuteRequest

        process = live.sandbox.process
        try:
            await self._call("create session", lambda: process.create_session(SESSION_ID))
        except Exception as exc:
            if classify(exc) is not Kind.CONFLICT:  # 409: a session from an earlier try
                raise self._as_sandbox_error("create session", exc) from None
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
            raise self._as_sandbox_error("start env server", exc) from None
        live.cmd_id = response.cmd_id

    async def _open_tunnel(self, live: _Live, timeout_s: float) -> Tunnel:
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

        try:
            return await Tunnel.open(
                live.target, o.port, known_hosts=o.known_hosts,
                connect_timeout_s=min(o.ssh_connect_timeout_s, timeout_s),
                keepalive_s=o.ssh_keepalive_s,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise ProviderConfigError(
                f"provider 'daytona': SSH gateway {live.target.host}:{live.target.port} host key "
                f"does not match option known_hosts={o.known_hosts!r}: {exc}"
            ) from None

    async def _fail_if_server_exited(self, live: _Live, last_error: BaseException | None) -> None:
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

    async def _tail(self, live: _Live) -> str:
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

    # --- destroy / list / close ------------------------------------------------------
    async def destroy(self, handle: SandboxHandle) -> None:
        await shielded(self._destroy(handle))

    async def _destroy(self, handle: SandboxHandle) -> None:
        live = self._live.pop(handle.sandbox_id, None)
        if live is not None:
            await self._close_tunnel(live)
        await self._delete(self._client(), handle.sandbox_id, live.sandbox if live else None)

    async def _delete(self, client: Any, sandbox_id: str, sandbox: Any | None = None) -> None:
        """Delete and wait until destroyed; a sandbox already gone is success."""
        first = [sandbox]

        async def attempt() -> None:
            target = first.pop() if first and first[0] is not None else await client.get(sandbox_id)
            first.clear()
            await target.delete(timeout=self.options.delete_timeout_s, wait=True)

        try:
            await self._call(f"delete sandbox {sandbox_id}", attempt,
                             retry_on=(Kind.RETRY, Kind.QUOTA, Kind.TIMEOUT))
        except Exception as exc:
            if classify(exc) is Kind.NOT_FOUND:
                return
            raise SandboxError(
                f"{self._as_sandbox_error(f'delete sandbox {sandbox_id}', exc)} "
                "(left running until its TTL; its labels let `hud-ray reap` find it)"
            ) from None

    async def _delete_quietly(self, client: Any, sandbox_id: str) -> None:
        try:
            await self._delete(client, sandbox_id)
        except Exception as exc:
            log.warning("daytona: could not delete sandbox %s: %s", sandbox_id, describe(exc))

    async def _delete_by_name(self, client: Any, name: str) -> None:
        with contextlib.suppress(Exception):
            found = await self._find_by_name(client, name)
            if found is not None:
                await self._delete_quietly(client, found.id)

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        from daytona import ListSandboxesQuery

        client = self._client()

        async def collect() -> list[Any]:
            return [sb async for sb in client.list(ListSandboxesQuery(labels=dict(labels)))]

        try:
            found = await self._call("list sandboxes", collect)
        except (ProviderConfigError, SandboxError):
            raise
        except Exception as exc:
            raise self._as_sandbox_error("list sandboxes", exc) from None
        return [
            SandboxHandle(provider=self.name, sandbox_id=sb.id, name=sb.name,
                          labels=dict(sb.labels or {}), data={"state": _state(sb)})
            for sb in found
            if _state(sb) != "destroyed"
        ]

    async def close(self) -> None:
        """Destroy what this instance still owns, then close the SDK client."""
        for sandbox_id in list(self._live):
            live = self._live[sandbox_id]
            handle = SandboxHandle(provider=self.name, sandbox_id=sandbox_id,
                                   name=live.sandbox.name)
            with contextlib.suppress(Exception):
                await self.destroy(handle)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._sdk is not None and self._sdk_loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await self._sdk.close()
        self._sdk = None

    # --- helpers ---------------------------------------------------------------------
    async def _close_tunnel(self, live: _Live) -> None:
        tunnel, live.tunnel = live.tunnel, None
        if tunnel is not None:
            await tunnel.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _as_sandbox_error(self, what: str, exc: BaseException) -> Exception:
        if isinstance(exc, ProviderConfigError | SandboxError):
            return exc
        return SandboxError(f"provider 'daytona': {what}: {describe(exc)}")

    def live_sandbox_ids(self) -> list[str]:
        """Sandboxes this instance still owns (tests check these)."""
        return list(self._live)
