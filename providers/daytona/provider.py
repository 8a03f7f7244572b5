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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ..base import Capabilities, Provider, SandboxHandle, SandboxSpec, shielded
from ..errors import ProviderConfigError, QuotaError, SandboxError, UnsupportedSpecError
from .access import AccessMixin, Live
from .lifecycle import LifecycleMixin, sdk_state
from .options import DaytonaOptions, recipe_for
from .retry import Backoff, Kind, as_sandbox_error, call_with_retries, describe
from .snapshots import resolve_snapshot

T = TypeVar("T")


class DaytonaProvider(AccessMixin, LifecycleMixin, Provider):
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
        self._live: dict[str, Live] = {}
        self._gateway_keys: list[Any] | None = None  # pinned SSH host keys, from the API
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

    @contextlib.asynccontextmanager
    async def _sdk_scope(self) -> AsyncIterator[Any]:
        """The client for one admin call (list, reap, destroy). A client made for the call
        alone (a fresh `asyncio.run`, e.g. a driver's reaper thread) is closed after it when
        this instance owns no sandbox, instead of leaking an aiohttp session per loop."""
        fresh = self._sdk is None or self._sdk_loop is not asyncio.get_running_loop()
        client = self._client()
        try:
            yield client
        finally:
            if fresh and not self._live and self._sdk is client:
                self._sdk = None
                with contextlib.suppress(Exception):
                    await client.close()

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
        except (ProviderConfigError, QuotaError, SandboxError):
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
        self._live[sandbox.id] = Live(sandbox, spec.env_name)
        return SandboxHandle(
            provider=self.name, sandbox_id=sandbox.id, name=spec.name, labels=labels,
            data={"snapshot": snapshot, "target": getattr(sandbox, "target", None),
                  "ttl_minutes": ttl},
        )

    # --- idle timer ------------------------------------------------------------------
    def keepalive_interval_s(self) -> float | None:
        # A third of the auto-stop interval: two refreshes may fail before it stops.
        return self.options.auto_stop_minutes * 60.0 / 3.0

    async def keep_alive(self, handle: SandboxHandle) -> None:
        live = self._live.get(handle.sandbox_id)
        if live is not None:  # one this process created (and has not destroyed)
            await self._call(f"refresh activity of {handle.sandbox_id}",
                             live.sandbox.refresh_activity)

    # --- destroy / list / close ------------------------------------------------------
    async def destroy(self, handle: SandboxHandle) -> None:
        await shielded(self._destroy(handle))

    async def _destroy(self, handle: SandboxHandle) -> None:
        live = self._live.pop(handle.sandbox_id, None)
        if live is not None:
            await self._close_tunnel(live)
        async with self._sdk_scope() as client:
            await self._delete(client, handle.sandbox_id, live.sandbox if live else None)

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        from daytona import ListSandboxesQuery

        async def collect() -> list[Any]:
            return [sb async for sb in client.list(ListSandboxesQuery(labels=dict(labels)))]

        async with self._sdk_scope() as client:
            try:
                found = await self._call("list sandboxes", collect)
            except (ProviderConfigError, QuotaError, SandboxError):
                raise
            except Exception as exc:
                raise as_sandbox_error("list sandboxes", exc) from None
        return [
            SandboxHandle(provider=self.name, sandbox_id=sb.id, name=sb.name,
                          labels=dict(sb.labels or {}), data={"state": sdk_state(sb)})
            for sb in found
            if sdk_state(sb) != "destroyed"
        ]

    async def reap(self, labels: dict[str, str]) -> list[SandboxHandle]:
        async with self._sdk_scope():  # one client for the listing and every delete
            return await super().reap(labels)

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
    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def live_sandbox_ids(self) -> list[str]:
        """Sandboxes this instance still owns (tests check these)."""
        return list(self._live)
