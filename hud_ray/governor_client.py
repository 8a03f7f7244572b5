"""The worker's side of the governor: `GovernorClient` batches grant requests and ledger
updates into few actor calls; `GovernedProvider` wraps a provider so every create is
granted (and recorded) first and every destroy reported — the rollout code cannot tell it
from the provider it wraps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import ray

from providers import (
    LABEL_INCARNATION,
    LABEL_ROLLOUT,
    LABEL_RUN,
    LABEL_SANDBOX,
    Provider,
    QuotaError,
    SandboxHandle,
    SandboxSpec,
)

log = logging.getLogger("hud_ray.governor")


class GovernorClient:
    """Worker side: batches grant requests and ledger updates into few actor calls."""

    def __init__(self, governor: Any, worker_id: str, flush_s: float = 0.05) -> None:
        self.governor = governor
        self.worker_id = worker_id
        self.flush_s = flush_s
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._created: list[tuple[str, dict[str, Any]]] = []
        self._destroyed: list[str] = []
        self._quota_errors = 0
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    async def acquire(self, entry: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, future))
        self._kick()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.destroyed(entry["name"])  # granted after all: give the slot back
            raise

    def created(self, name: str, handle: SandboxHandle) -> None:
        self._created.append((name, handle.model_dump(mode="json")))
        self._kick()

    def destroyed(self, name: str) -> None:
        self._destroyed.append(name)
        self._kick()

    def quota_error(self) -> None:
        self._quota_errors += 1
        self._kick()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send what is still queued (the run's last destroys), then stop the pump: a kept
        worker (hud_ray.pool) drops this client at its next run, and a pump still pending
        then would be destroyed mid-flight."""
        pump = self._pump
        if pump is None or pump.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(pump), timeout_s)
        except Exception as exc:  # governor gone or slow: the reaper covers the ledger
            log.warning("governor client: last updates not sent (%s)", exc)
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump

    def _kick(self) -> None:
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._waiting or self._created or self._destroyed or self._quota_errors:
            await asyncio.sleep(self.flush_s)  # gather a batch: one call serves many
            try:
                await self._exchange()
            except ray.exceptions.RayError as exc:  # governor restarting: keep the queue
                log.warning("governor unreachable (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _exchange(self) -> None:
        created, self._created = self._created, []
        destroyed, self._destroyed = self._destroyed, []
        quota, self._quota_errors = self._quota_errors, 0
        if created or destroyed or quota:
            try:
                await self.governor.update.remote(created, destroyed, quota)
            except BaseException:
                self._created[:0], self._destroyed[:0] = created, destroyed
                self._quota_errors += quota
                raise
        # A request cancelled while it waited (its rollout ended) leaves the queue here;
        # kept, it would keep the pump looping forever.
        waiting = self._waiting = [(e, f) for e, f in self._waiting if not f.done()]
        if not waiting:
            return
        granted = await self.governor.acquire.remote(
            self.worker_id, [e for e, _ in waiting], 1.0)
        for entry, future in waiting[:granted]:
            if future.done():  # cancelled while we asked: hand the grant straight back
                self.destroyed(entry["name"])
            else:
                future.set_result(None)
        served = {id(f) for _, f in waiting[:granted]}
        self._waiting = [(e, f) for e, f in self._waiting if id(f) not in served]


class GovernedProvider(Provider):
    """Wraps a provider: ask the governor before every create, tell it after destroy."""

    def __init__(self, inner: Provider, client: GovernorClient, worker_id: str,
                 node_id: str | None = None) -> None:  # no super().__init__: options are inner's
        self.inner = inner
        self.client = client
        self.worker_id = worker_id
        self.node_id = node_id
        self.name = inner.name  # type: ignore[misc]
        self.capabilities = inner.capabilities  # type: ignore[misc]
        self.options = inner.options
        self._reserved: set[str] = set()  # granted ahead of their create (`reserve`)

    def check_config(self) -> None:
        self.inner.check_config()

    def check_spec(self, spec: SandboxSpec) -> None:
        self.inner.check_spec(spec)

    def _entry(self, spec: SandboxSpec, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": spec.name, "run_id": labels.get(LABEL_RUN, ""),
                "incarnation": labels.get(LABEL_INCARNATION, ""),
                "rollout_key": labels.get(LABEL_ROLLOUT, ""), "labels": labels,
                "deadline": time.time() + spec.lifetime_s, "worker_id": self.worker_id,
                "node_id": self.node_id}

    async def reserve_grant(self, spec: SandboxSpec, labels: dict[str, str]) -> None:
        """Wait for the create grant of `spec` now (the rollout's `throttle` phase); the
        `create` that follows uses it. The ledger entry is made at the grant, as always."""
        labels = {**labels, LABEL_SANDBOX: spec.name}
        await self.client.acquire(self._entry(spec, labels))
        self._reserved.add(spec.name)

    def release_grant(self, name: str) -> None:
        """A grant whose create never came (the rollout failed first): give it back."""
        if name in self._reserved:
            self._reserved.discard(name)
            self.client.destroyed(name)

    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        labels = {**labels, LABEL_SANDBOX: spec.name}
        if spec.name in self._reserved:
            self._reserved.discard(spec.name)
        else:
            await self.client.acquire(self._entry(spec, labels))
        try:
            handle = await self.inner.create(spec, labels)
        except QuotaError:
            self.client.quota_error()
            self.client.destroyed(spec.name)
            raise
        except BaseException:
            self.client.destroyed(spec.name)
            raise
        self.client.created(spec.name, handle)
        return handle

    async def ready(self, handle: SandboxHandle, timeout_s: float) -> Any:
        return await self.inner.ready(handle, timeout_s)

    async def destroy(self, handle: SandboxHandle) -> None:
        await self.inner.destroy(handle)
        self.client.destroyed(handle.name)

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        return await self.inner.list(labels)

    async def diagnostics(self, handle: SandboxHandle) -> str:
        return await self.inner.diagnostics(handle)

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # alive_pids() and other extras
        return getattr(self.inner, name)
