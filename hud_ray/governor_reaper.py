"""The governor's reaper: destroys what a dead worker, a dead driver (no heartbeat within
its lease), a finished run or a passed deadline left behind — by handle, or by the
sandbox's label when its create never answered (looked for with back-off, up to
`create_grace_s`). Passes never overlap: they share the provider."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from hud_ray.governor_policy import LedgerEntry, _life
from providers import LABEL_RUN, LABEL_SANDBOX, Provider, SandboxHandle, get_provider

log = logging.getLogger("hud_ray.governor")


class ReaperMixin:
    """The ledger's reaping half of `GovernorImpl` (state lives on the governor)."""

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
