"""What a finished row means to the run: written, retried in a new sandbox after
exponential back-off with jitter (`infra_error` / `quota_error` only, bounded attempts),
dropped (cancelled: a resume runs it), or the end of the run (a fatal row, the run's first
sandbox failing to start its env, the error budget)."""

from __future__ import annotations

import heapq
import random
import time
from typing import Any

from hud_ray.inflight import Flight
from hud_ray.rollout import ENV_START_ERROR
from hud_ray.schema import RETRYABLE, Status
from hud_ray.tasks import Rollout


class OutcomesMixin:
    """Lands rows (state lives on the Scheduler)."""

    def _land(self, row: dict[str, Any], entry: Flight | None) -> None:
        fatal = row.pop("_fatal", False)
        if fatal:
            # Not written: the rollout never really ran; a resume after the fix runs it.
            self._abort = f"{row['error_type']}: {row['error_message']}"
            return
        if self._probing:
            if row.get("error_type") == ENV_START_ERROR:
                # The run's first sandbox: every other one would fail the same way.
                self._abort = (f"the env failed to start in the run's first sandbox "
                               f"({row['rollout_key']}), so no more were started: "
                               f"{str(row['error_message']).splitlines()[0]}")
                return
            if row.get("start_s") is not None:  # this rollout's env answered hello
                self._probing = False
        if row["status"] in RETRYABLE and entry is not None:
            self._after_failure(entry.rollout, entry.attempt, row)
            return
        if row["status"] == Status.CANCELLED:
            return  # not written: a resume runs it again
        self._write(row)

    def _final(self, row: dict[str, Any]) -> bool:
        """A row collected at an interrupt is written only if it would have been final:
        not cancelled, not fatal, not a retryable failure with attempts left (a resume
        runs those again — written, they would be skipped as done)."""
        fatal = row.pop("_fatal", False)
        if fatal or row["status"] == Status.CANCELLED:
            return False
        return not (row["status"] in RETRYABLE and row["attempts"] < self.config.max_attempts)

    def _after_failure(self, rollout: Rollout, attempt: int, row: dict[str, Any]) -> None:
        if attempt < self.config.max_attempts and not self._abort:
            self._schedule_retry(rollout, attempt + 1)
        else:
            self._write(row)

    def _schedule_retry(self, rollout: Rollout, attempt: int) -> None:
        backoff = min(self.config.retry_backoff_max_s,
                      self.config.retry_backoff_s * 2 ** (attempt - 2))
        ready_at = time.monotonic() + backoff * random.uniform(0.5, 1.0)
        heapq.heappush(self._retry_heap, (ready_at, next(self._tiebreak), rollout, attempt))

    def _write(self, row: dict[str, Any]) -> None:
        self._finished += 1
        if row["status"] != Status.OK:
            self._failures += 1
            self._check_budget()
        if self.progress is not None:
            self.progress.update(row)
        self.sink.add(row)

    def _check_budget(self) -> None:
        cfg = self.config
        if cfg.max_failures is not None and self._failures > cfg.max_failures:
            self._abort = (f"error budget exceeded: {self._failures} failed rollouts "
                           f"(--max-failures {cfg.max_failures})")
        if (cfg.max_failure_fraction is not None and self._finished >= 20
                and self._failures / self._finished > cfg.max_failure_fraction):
            self._abort = (f"error budget exceeded: {self._failures}/{self._finished} failed "
                           f"(> {cfg.max_failure_fraction:.0%})")
