"""`SimProvider`: the Provider contract over simulated sandboxes (see the package doc)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
import weakref
from typing import Any

from ..base import Capabilities, Endpoint, Provider, SandboxHandle, SandboxSpec
from ..errors import CreateError, NotReadyError, ProviderConfigError, QuotaError
from .ledger import AccountQuota, EventLog, account_dir, live_sandboxes, read_events
from .options import Fate, FateModel, SimOptions
from .server import SimHub, SimSandbox

# Live instances, so `sim_stats` and `list` can flush their buffered events first.
_INSTANCES: weakref.WeakSet[SimProvider] = weakref.WeakSet()


class SimProvider(Provider):
    name = "sim"
    Options = SimOptions
    default_create_rate = 5000.0
    default_live_cap = 10000
    # A simulator pretends: images and the usual resources are accepted (and ignored).
    capabilities = Capabilities(images=True, resources={"cpu", "memory_mb", "storage_mb", "os"},
                                gpu=False, warm_ahead=True)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options: SimOptions
        opts = self.options
        self.account_dir = account_dir(opts.account, opts.state_dir)
        self._boxes: dict[str, SimSandbox] = {}
        self._hub = SimHub(self._boxes, opts)
        self._log = EventLog(self.account_dir, opts.flush_s) if opts.record else None
        self._quota: AccountQuota | None = None
        if opts.live_cap is not None or opts.create_rate is not None:
            try:
                self._quota = AccountQuota(self.account_dir, opts.live_cap, opts.create_rate,
                                           opts.create_burst)
            except OSError as exc:
                raise ProviderConfigError(
                    f"provider 'sim': cannot keep the account quota in {self.account_dir} "
                    f"(option state_dir / env HUD_RAY_STATE_DIR): {exc}") from None
        self._owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._foreign_destroyed: set[str] = set()
        self._id_key = opts.account.encode()
        self._fates = FateModel(opts)
        _INSTANCES.add(self)
        # An instance dropped without close() (or alive at exit) still writes its events.
        if self._log is not None:
            weakref.finalize(self, self._log.close)
        if self._quota is not None:
            weakref.finalize(self, self._quota.close)

    def check_config(self) -> None:
        if self._log is None:
            return
        try:
            self.account_dir.mkdir(parents=True, exist_ok=True)
            probe = self.account_dir / f".probe-{self._owner}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ProviderConfigError(
                f"provider 'sim': cannot record into {self.account_dir} (option state_dir / env "
                f"HUD_RAY_STATE_DIR, or record=false): {exc}") from None

    # --- draws ---------------------------------------------------------------------------
    def fate(self, name: str) -> Fate:
        """The seeded draws of the sandbox that `name` would get (pure: tests, reports)."""
        return self._fates.draw(name)

    def sandbox_id(self, name: str) -> str:
        digest = hashlib.blake2b(name.encode(), digest_size=8, key=self._id_key).hexdigest()
        return "sim-" + digest

    # --- lifecycle -----------------------------------------------------------------------
    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        sandbox_id = self.sandbox_id(spec.name)
        box = self._boxes.get(sandbox_id)
        if box is None:
            box = self._new_box(sandbox_id, spec.name, labels)
        return SandboxHandle(provider=self.name, sandbox_id=sandbox_id, name=box.name,
                             labels=box.labels, created_at=box.created_at,
                             data={"account": self.options.account, "owner": self._owner})

    def _new_box(self, sandbox_id: str, name: str, labels: dict[str, str]) -> SimSandbox:
        fate = self._fates.draw(name)
        now = time.time()
        if fate.quota:
            self._record(("q", now, sandbox_id, "simulated 429"))
            raise QuotaError(
                f"provider 'sim' (account {self.options.account!r}): simulated 429 creating "
                f"{name}", retry_after_s=self.options.quota_retry_after_s)
        if self._quota is not None:
            refused = self._quota.acquire()
            if refused is not None:
                reason, retry_after_s = refused
                self._record(("q", now, sandbox_id, reason))
                raise QuotaError(f"provider 'sim' (account {self.options.account!r}): {reason}",
                                 retry_after_s=retry_after_s)
        if fate.create_fail:
            if self._quota is not None:
                self._quota.release()  # a failed create still spent its token, not a live slot
            self._record(("f", now, sandbox_id, "simulated create failure"))
            raise CreateError(f"provider 'sim': simulated create failure for {name}")
        box = SimSandbox(sandbox_id, name, labels, fate, now)
        self._boxes[sandbox_id] = box
        self._record(("c", now, sandbox_id, name, labels))
        return box

    async def ready(self, handle: SandboxHandle, timeout_s: float) -> Endpoint:
        box = self._boxes.get(handle.sandbox_id)
        if box is None:
            raise NotReadyError(f"sim sandbox {handle.sandbox_id} is not live in this provider "
                                "(destroyed, or created by another process)")
        wait = box.ready_at - time.monotonic()
        if wait > timeout_s:
            await asyncio.sleep(max(0.0, timeout_s))
            raise NotReadyError(f"sim sandbox {box.id}: cold start of {box.fate.cold_start_s:.2f}s "
                                f"exceeds the ready timeout of {timeout_s:.2f}s")
        if wait > 0:
            await asyncio.sleep(wait)
        if box.dead:
            raise NotReadyError(f"sim sandbox {box.id} was destroyed while starting")
        if box.fate.ready_fail:
            raise NotReadyError(f"sim sandbox {box.id}: simulated env exit before serving")
        port = await self._hub.port_for_this_loop()
        return Endpoint(url=f"tcp://{self.options.host}:{port}", preamble=box.preamble())

    async def destroy(self, handle: SandboxHandle) -> None:
        box = self._boxes.pop(handle.sandbox_id, None)
        if box is not None:
            box.dead = True
            box.cut()
        elif handle.data.get("owner") == self._owner or handle.sandbox_id in self._foreign_destroyed:
            return  # ours and already destroyed: idempotent
        else:
            # Created by another process (a reaper cleaning up after a killed worker).
            self._foreign_destroyed.add(handle.sandbox_id)
        if self._quota is not None:
            self._quota.release()
        self._record(("d", time.time(), handle.sandbox_id), durable=True)

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        """Live sandboxes of the account (every process, through the event logs)."""
        live: dict[str, tuple[str, dict[str, str], float]] = {}
        flush_all(self.options.account)
        for sandbox_id, row in live_sandboxes(read_events(self.account_dir)).items():
            live[sandbox_id] = (row.get("name", ""), row.get("labels") or {}, row["t"])
        for box in self._boxes.values():
            live[box.id] = (box.name, box.labels, box.created_at)
        found = []
        for sandbox_id, (name, box_labels, created_at) in live.items():
            if sandbox_id in self._foreign_destroyed:
                continue
            if all(box_labels.get(k) == v for k, v in labels.items()):
                found.append(SandboxHandle(
                    provider=self.name, sandbox_id=sandbox_id, name=name, labels=box_labels,
                    created_at=created_at, data={"account": self.options.account}))
        return found

    async def diagnostics(self, handle: SandboxHandle) -> str:
        box = self._boxes.get(handle.sandbox_id)
        if box is None:
            return f"sim sandbox {handle.sandbox_id}: not live in this provider"
        f = box.fate
        drawn = [k for k in ("crash", "hang", "tunnel_drop", "env_error", "ready_fail")
                 if getattr(f, k)]
        return (f"sim sandbox {box.id}: cold_start={f.cold_start_s:.3f}s "
                f"duration={f.duration_s:.3f}s drawn={','.join(drawn) or 'none'}")

    async def close(self) -> None:
        """Stop serving and write the event log. Sandboxes stay live in the account (as a
        cloud's would); `reap` or `destroy` ends them."""
        self._hub.close()
        if self._log is not None:
            self._log.close()

    # --- introspection for tests and benchmarks -----------------------------------------
    def live_ids(self) -> list[str]:
        return list(self._boxes)

    def flush(self) -> None:
        if self._log is not None:
            self._log.flush()

    def _record(self, event: tuple[Any, ...], durable: bool = False) -> None:
        if self._log is not None:
            self._log.add(event, durable)


def flush_all(account: str | None = None) -> None:
    """Write the buffered events of every provider in this process (of one account)."""
    for provider in list(_INSTANCES):
        if account is None or provider.options.account == account:
            provider.flush()

