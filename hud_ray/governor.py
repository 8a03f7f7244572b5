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
from typing import Any

import ray

from hud_ray.governor_client import GovernedProvider, GovernorClient
from hud_ray.governor_policy import GovernorPolicy, LedgerEntry, _life
from hud_ray.governor_reaper import ReaperMixin
from hud_ray.metrics import record_governor
from providers import Provider

__all__ = [
    "HEAD_NODE_RESOURCE", "NAMESPACE", "GovernedProvider", "Governor", "GovernorClient",
    "GovernorImpl", "GovernorPolicy", "LedgerEntry", "get_governor", "governor_name",
]

log = logging.getLogger("hud_ray.governor")
NAMESPACE = "hud_ray"


class GovernorImpl(ReaperMixin):
    """The account's token bucket, live cap and ledger; the reaper is `ReaperMixin`."""

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

    async def stats(self) -> dict[str, Any]:
        self._refill()
        return {"live": len(self.ledger), "rate": self.rate, "tokens": self.tokens,
                **self.counters, "policy": self.policy.model_dump()}

    async def entries(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return [vars(e) for e in self.ledger.values() if run_id in (None, e.run_id)]

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
