"""The scheduler, fed live: rollouts come from a rollout source while it runs (not from a
fixed task stream), every final row is handed to the source, and rollouts can be
cancelled wherever they are (queued, waiting to retry, or running on a worker).

Everything else — workers, slots, warm sandboxes, the sandbox governor, infra retries in
a new sandbox, dead-worker replacement, deadlines, Parquet — is the ordinary scheduler's.
"""

from __future__ import annotations

import heapq
import logging
from typing import Any, Protocol

from hud_ray.scheduler import Scheduler
from hud_ray.tasks import Rollout
from hud_ray.warm import spec_key

log = logging.getLogger("hud_ray.rl")


class Feed(Protocol):
    """What the live scheduler needs from its rollout source (called on its thread)."""

    def next_rollout(self) -> Rollout | None: ...  # None: nothing to start now
    def exhausted(self) -> bool: ...  # closed and nothing left: the run may end
    def take_cancels(self) -> set[str]: ...  # rollout keys to cancel
    def on_row(self, row: dict[str, Any]) -> None: ...  # a final row, before it is written


class LiveScheduler(Scheduler):
    def __init__(self, *args: Any, feed: Feed, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feed = feed
        self._cancelled: set[str] = set()  # never retried again

    def _next_new(self) -> Rollout | None:
        if self._source_done:
            return None
        rollout = self.feed.next_rollout()
        if rollout is None:
            # Nothing now; the run goes on until the source is closed and drained.
            self._source_done = self.feed.exhausted()
            return None
        self._check_spec(rollout)
        if self.config.warm_per_slot > 0:
            self._kinds_seen.add(spec_key(rollout))
        return rollout

    def _dispatch(self) -> None:
        cancels = self.feed.take_cancels()
        if cancels:
            self._cancel(cancels)
        super()._dispatch()

    def _write(self, row: dict[str, Any]) -> None:
        self.feed.on_row(row)
        super()._write(row)

    def _cancel(self, keys: set[str]) -> None:
        """Queued and retrying rollouts are forgotten; running ones are cancelled on their
        worker, which tears their sandboxes down (their `cancelled` rows are not written)."""
        self._cancelled |= keys
        self._lookahead = type(self._lookahead)(r for r in self._lookahead
                                                if r.rollout_key not in keys)
        kept = [item for item in self._retry_heap if item[2].rollout_key not in keys]
        if len(kept) != len(self._retry_heap):
            heapq.heapify(kept)
            self._retry_heap = kept
        for worker in self.workers:
            running = [k for k in worker.inflight if k in keys]
            if running:
                worker.actor.cancel.remote(running)

    def _schedule_retry(self, rollout: Rollout, attempt: int) -> None:
        if rollout.rollout_key not in self._cancelled:  # its group is gone: no new sandbox
            super()._schedule_retry(rollout, attempt)
