"""Cluster-wide quota governor, sandbox ledger and reaper: one named, detached Ray actor
per provider account, shared by every driver, job and notebook on the cluster.

- **Token bucket** on creates per second and a **hard cap on live sandboxes** (a sandbox
  counts from the moment its create is granted until its destroy is confirmed — Daytona
  and e2b users get burned by "deleting" sandboxes that still count).
- **AIMD**: a quota error halves the create rate; quiet time adds it back linearly.
- **Ledger**: a create is granted only once its entry (run, rollout key, deterministic
  sandbox name, labels, deadline, worker, node) is recorded — i.e. *before* the provider
  is called. A reaper destroys what a dead worker, a dead driver (no heartbeat) or a
  passed deadline left behind, using the handle or the provider's labels.

Workers talk to it through `GovernorClient`, which batches grants and ledger updates into
few calls, and `GovernedProvider`, a provider wrapper the rollout code cannot tell apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from pydantic import BaseModel, Field

from hud_ray.metrics import record_governor
from providers import (
    LABEL_INCARNATION,
    LABEL_ROLLOUT,
    LABEL_RUN,
    LABEL_SANDBOX,
    Provider,
    QuotaError,
    SandboxHandle,
    SandboxSpec,
    get_provider,
)

log = logging.getLogger("hud_ray.governor")
NAMESPACE = "hud_ray"


class GovernorPolicy(BaseModel):
    """Set by the run that starts the account's governor; a later run's explicit settings
    change it for every driver on the account (`configure`). Table: docs/cluster.md."""

    create_rate: float = Field(10.0, description="sandbox creates per second, all drivers")
    live_cap: int = Field(256, description="most sandboxes alive at once, all drivers")
    min_rate: float = Field(0.2, description="AIMD floor for create_rate")
    increase_per_s: float = Field(0.5, description="AIMD: creates/s added back per quiet second")
    decrease_factor: float = Field(0.5, description="AIMD: rate multiplier on a quota error")
    quota_cooldown_s: float = Field(5.0, description="no increase this long after a quota error")
    run_lease_s: float = Field(30.0, description="a run without heartbeat this long is dead: "
                               "its sandboxes are reaped")
    reap_interval_s: float = Field(2.0, description="seconds between reaper passes")
    deadline_grace_s: float = Field(30.0, description="a sandbox past its lifetime by this "
                                    "much is reaped, its run alive or not")
    # A worker killed mid-create, or a cloud that finishes the request anyway, can make a
    # sandbox appear after the reaper first looked for it.
    create_grace_s: float = Field(300.0, description="a granted create whose answer never "
                                  "came is looked for by label this long after the grant "
                                  "(and counts against live_cap meanwhile)")


@dataclass
class LedgerEntry:
    name: str
    run_id: str
    rollout_key: str
    labels: dict[str, str]
    deadline: float
    worker_id: str
    node_id: str | None = None
    handle: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    incarnation: str = ""  # the driver start that asked for it ("" = an old client)
    doomed: bool = False  # chosen by the reaper: an orphan now, whatever comes later
    looks: int = 0  # label searches so far for a create that never answered
    next_look: float = 0.0


class GovernorImpl:
    def __init__(self, provider: str, provider_options: dict[str, Any],
                 policy: dict[str, Any], env_vars: dict[str, str] | None = None,
                 account: str = "default") -> None:
        import os

        from hud_ray.redact import install_log_scrubber, run_scrubber

        os.environ.update(env_vars or {})  # e.g. the state dir its provider reaps in
        install_log_scrubber(run_scrubber(provider_options, env_vars or {}))
        self.provider_name = provider
        self.account = account
        self._throttled_unreported = 0
        self.provider_options = provider_options
        self.policy = GovernorPolicy(**policy)
        self.rate = self.policy.create_rate
        self.tokens = 1.0
        self._refilled = time.monotonic()
        self._last_quota = 0.0
        self.ledger: dict[str, LedgerEntry] = {}
        # Keyed by incarnation (a driver start), not run id: a run id used again in one
        # Ray session is a new incarnation, never "finished" at its start.
        self.run_seen: dict[str, float] = {}
        self.finished_runs: set[str] = set()
        self.gone_workers: set[str] = set()
        self.counters = {"granted": 0, "throttled": 0, "quota_errors": 0, "reaped": 0}
        self._changed = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._reap_lock = asyncio.Lock()  # passes never overlap (they share the provider)
        self._provider: Provider | None = None
        self.run_lease: dict[str, float] = {}  # a run's own lease, from its heartbeats

    # --- quota -------------------------------------------------------------------------
    def _refill(self) -> None:
        now = time.monotonic()
        dt, self._refilled = now - self._refilled, now
        if now - self._last_quota > self.policy.quota_cooldown_s:
            self.rate = min(self.policy.create_rate, self.rate + self.policy.increase_per_s * dt)
        # A bucket of 0.1 s worth of tokens: bursts stay small, so creates in any 1 s
        # window stay within ~1.1x the rate.
        self.tokens = min(max(1.0, self.rate / 10), self.tokens + self.rate * dt)

    async def acquire(self, worker_id: str, entries: list[dict[str, Any]],
                      timeout_s: float = 1.0) -> int:
        """Grant up to len(entries) creates; record the granted entries in the ledger."""
        self._ensure_reaper()
        for raw in entries:
            await self._settle_name(raw["name"])
        deadline = time.monotonic() + timeout_s
        while True:
            self._refill()
            room = self.policy.live_cap - len(self.ledger)
            grant = min(len(entries), int(self.tokens), room)
            if grant >= 1:
                self.tokens -= grant
                for raw in entries[:grant]:
                    entry = LedgerEntry(**raw)
                    self.ledger[entry.name] = entry
                    self.run_seen.setdefault(_life(entry), time.monotonic())
                self.counters["granted"] += grant
                self._report()
                return grant
            self.counters["throttled"] += 1
            self._throttled_unreported += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return 0
            wait = 1.0 / self.rate if room > 0 else remaining
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(wait, remaining))

    async def update(self, created: list[tuple[str, dict[str, Any]]],
                     destroyed: list[str], quota_errors: int = 0) -> None:
        for name, handle in created:
            if name in self.ledger:
                self.ledger[name].handle = handle
        for name in destroyed:
            self.ledger.pop(name, None)
        if quota_errors:
            self.counters["quota_errors"] += quota_errors
            self._last_quota = time.monotonic()
            self.rate = max(self.policy.min_rate, self.rate * self.policy.decrease_factor)
            self.tokens = min(self.tokens, 1.0)
        if destroyed:
            self._changed.set()
        self._report()

    def _report(self) -> None:
        record_governor(self.provider_name, self.account, self._throttled_unreported,
                        len(self.ledger), self.rate)
        self._throttled_unreported = 0

    async def configure(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Apply a run's explicit settings to this running governor — so to every driver
        on the account from now on. Returns what changed."""
        changed = {k: v for k, v in overrides.items() if getattr(self.policy, k) != v}
        if changed:
            self.policy = GovernorPolicy(**{**self.policy.model_dump(), **changed})
            if "create_rate" in changed:
                self.rate = self.policy.create_rate
            self._changed.set()  # a raised live cap frees waiting grants now
            log.warning("governor %s/%s: policy changed by a run: %s",
                        self.provider_name, self.account, changed)
        return changed

    # --- runs and workers ------------------------------------------------------------
    async def heartbeat(self, run_id: str, lease_s: float | None = None,
                        incarnation: str = "") -> None:
        """The incarnation (a driver start of `run_id`) is alive. `lease_s`: its own lease,
        so a later run that changes the policy's `run_lease_s` does not shorten the lease
        of a run already going."""
        self._ensure_reaper()
        life = incarnation or run_id
        self.run_seen[life] = time.monotonic()
        if lease_s is not None:
            self.run_lease[life] = lease_s

    async def run_finished(self, run_id: str, incarnation: str = "") -> None:
        """This driver start is over: what it still holds is orphaned. A later start of
        the same run id is another incarnation and unaffected."""
        life = incarnation or run_id
        self.finished_runs.add(life)
        self.run_seen.pop(life, None)
        self.run_lease.pop(life, None)
        await self.reap_once()
        self._forget_finished()

    async def reap_run(self, run_id: str, keep_incarnation: str = "") -> int:
        """Destroy every sandbox of `run_id` held by another incarnation than
        `keep_incarnation`: a resumed run's predecessors are dead or done, and what they
        left is orphaned (the new driver has created none yet)."""
        for entry in self.ledger.values():
            if entry.run_id == run_id and (not keep_incarnation
                                           or entry.incarnation != keep_incarnation):
                entry.doomed = True
        return await self.reap_once()

    def _forget_finished(self) -> None:
        """Keep the finished set bounded: an incarnation with nothing left in the ledger
        needs no mark (a late grant for it expires by lease, as any silent run's)."""
        holding = {_life(e) for e in self.ledger.values()}
        self.finished_runs &= holding

    async def worker_gone(self, worker_id: str) -> None:
        self.gone_workers.add(worker_id)
        await self.reap_once()

    async def stats(self) -> dict[str, Any]:
        self._refill()
        return {"live": len(self.ledger), "rate": self.rate, "tokens": self.tokens,
                **self.counters, "policy": self.policy.model_dump()}

    async def entries(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return [vars(e) for e in self.ledger.values() if run_id in (None, e.run_id)]

    # --- reaper ------------------------------------------------------------------------
    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.policy.reap_interval_s)
            try:
                await self.reap_once(force=False)
            except Exception as exc:  # keep reaping; log the failure
                log.warning("reaper pass failed: %s", exc)

    def _orphans(self) -> list[LedgerEntry]:
        now_mono, now = time.monotonic(), time.time()
        out = []
        for entry in self.ledger.values():
            life = _life(entry)
            lease = self.run_lease.get(life, self.policy.run_lease_s)
            run_dead = (life in self.finished_runs
                        or now_mono - self.run_seen.get(life, now_mono) > lease)
            if (entry.doomed or run_dead or entry.worker_id in self.gone_workers
                    or now > entry.deadline + self.policy.deadline_grace_s):
                entry.doomed = True
                out.append(entry)
        return out

    async def reap_once(self, force: bool = True) -> int:
        """Destroy every orphan: by handle, else (its create never answered us) found by
        its sandbox label. `force=False` (the timer): creates that never answered are
        looked for with backoff. Returns how many sandboxes were destroyed."""
        async with self._reap_lock:
            orphans = self._orphans()
            if not orphans:
                return 0
            provider = self._get_provider()
            done = 0
            for entry in orphans:
                if entry.handle is None and not force and time.time() < entry.next_look:
                    continue
                done += await self._reap_entry(entry, provider)
            self.counters["reaped"] += done
            self._changed.set()
            self._forget_finished()
            if not any(e.doomed for e in self.ledger.values()):
                # Nothing left to look for: release the provider's clients (and flush its
                # books) until the next orphan.
                self._provider = None
                with contextlib.suppress(Exception):
                    await provider.close()
            return done

    async def _reap_entry(self, entry: LedgerEntry, provider: Provider) -> int:
        """Destroy one orphan's sandbox; 1 if destroyed. A create that has not answered
        stays in the ledger (a create can land after the first look) until found or
        `create_grace_s` after its grant."""
        by_handle = entry.handle is not None
        try:
            if by_handle:
                found = [SandboxHandle.model_validate(entry.handle)]
            else:
                entry.looks += 1
                entry.next_look = time.time() + min(30.0, 0.5 * 2 ** entry.looks)
                found = await provider.list({LABEL_RUN: entry.run_id, LABEL_SANDBOX: entry.name})
            for handle in found:
                await provider.destroy(handle)
        except Exception as exc:
            log.warning("reaping %s failed (will retry): %s", entry.name, exc)
            found = None
        if self.ledger.get(entry.name) is not entry:
            return 1 if found else 0  # reported destroyed meanwhile
        if found:
            self.ledger.pop(entry.name)
            return 1
        if entry.handle is None and time.time() - entry.created_at > self.policy.create_grace_s:
            log.warning("gave up looking for sandbox %s (granted %.0f s ago, never seen)",
                        entry.name, time.time() - entry.created_at)
            self.ledger.pop(entry.name)
        return 0

    async def _settle_name(self, name: str) -> None:
        """A resumed run reuses its dead predecessor's sandbox names. Before granting one,
        reap the orphan still holding it: nothing by that name is the new one yet."""
        old = self.ledger.get(name)
        if old is None or not old.doomed:
            return
        async with self._reap_lock:
            if self.ledger.get(name) is not old:
                return
            self.counters["reaped"] += await self._reap_entry(old, self._get_provider())
            if self.ledger.get(name) is old:  # not found: the name is the new run's now
                log.warning("sandbox name %s reused by a resumed run before its previous "
                            "holder was found; a late create of that one is not reaped", name)
                self.ledger.pop(name)

    def _get_provider(self) -> Provider:
        if self._provider is None:
            self._provider = get_provider(self.provider_name, **self.provider_options)
        return self._provider


def _life(entry: LedgerEntry) -> str:
    """What an entry's liveness hangs on: its incarnation (its run id for old clients)."""
    return entry.incarnation or entry.run_id


Governor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(GovernorImpl)


HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray puts it on the head node only


def governor_name(provider: str, account: str) -> str:
    return f"hud-ray-governor:{provider}:{account}"


def get_governor(provider: Provider, provider_options: dict[str, Any],
                 policy: dict[str, Any] | None = None,
                 env_vars: dict[str, str] | None = None, apply_policy: bool = True) -> Any:
    """The account's governor, created on first use (race-free via get_if_exists);
    `apply_policy`: make `policy` (explicit settings) hold on a governor already up."""
    defaults = {"create_rate": provider.default_create_rate,
                "live_cap": provider.default_live_cap}
    # On the head node: its ledger lives in memory, and a worker node can go away (a
    # restarted governor would forget every sandbox it granted).
    governor = Governor.options(
        name=governor_name(provider.name, provider.account()), namespace=NAMESPACE,
        lifetime="detached", get_if_exists=True, resources={HEAD_NODE_RESOURCE: 0.001},
    ).remote(provider.name, provider_options, {**defaults, **(policy or {})}, env_vars,
             provider.account())
    if policy and apply_policy:  # an earlier run may have started it with other settings
        ray.get(governor.configure.remote(policy), timeout=60)
    return governor


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
        waiting = [(e, f) for e, f in self._waiting if not f.done()]
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
