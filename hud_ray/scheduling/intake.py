"""Where the scheduler's rollouts come from: retries due, then (mixed-image runs) rollouts
whose sandbox kind a worker has warm, then the task stream — read lazily, skipping what a
resume already has, each spec checked against the provider before it is handed out.

`_next_new` is the single seam new rollouts pass through (an RL source feeds it)."""

from __future__ import annotations

import collections
import heapq
import time

from hud_ray.inflight import WorkerSlot
from hud_ray.rollout import RolloutConfig, sandbox_spec
from hud_ray.scheduling.errors import RunAborted
from hud_ray.tasks import Rollout, TaskFileError, task_fingerprint
from hud_ray.warm import spec_key
from providers import UnsupportedSpecError


class IntakeMixin:
    """Chooses what a worker with free slots gets next (state lives on the Scheduler)."""

    def _take(self, free: int, worker: WorkerSlot) -> list[tuple[Rollout, int]]:
        if self._probing:  # one rollout in flight until an env has answered hello
            free = min(free, 1 - sum(len(w.inflight) for w in self.workers))
        items: list[tuple[Rollout, int]] = []
        now = time.monotonic()
        while free > len(items) and self._retry_heap and self._retry_heap[0][0] <= now:
            _, _, rollout, attempt = heapq.heappop(self._retry_heap)
            items.append((rollout, attempt))
        if free > len(items) and worker.warm and len(self._kinds_seen) > 1:
            items += self._take_matching(free - len(items), worker.warm)
        while free > len(items):
            rollout = self._lookahead.popleft() if self._lookahead else self._next_new()
            if rollout is None:
                break
            items.append((rollout, 1))
        return items

    def _next_new(self) -> Rollout | None:
        """The next rollout from the task stream that still has to run."""
        while not self._source_done:
            try:
                rollout = next(self.source, None)
            except TaskFileError as exc:  # a bad row past the plan-time scan: stop here
                raise RunAborted(str(exc)) from None
            if rollout is None:
                self._source_done = True
                break
            if rollout.rollout_key in self.skip_keys and not self._task_changed(rollout):
                continue
            self._check_spec(rollout)
            if self.config.warm_per_slot > 0:
                self._kinds_seen.add(spec_key(rollout))
            return rollout
        return None

    def _task_changed(self, rollout: Rollout) -> bool:
        """A done rollout whose task changed under its slug since it ran: run it again
        (its new row supersedes the old; readers keep the latest)."""
        if not isinstance(self.skip_keys, dict):
            return False
        old = self.skip_keys.get(rollout.rollout_key)
        if old is None or int(task_fingerprint(rollout.task), 16) == old:
            return False
        self.changed_slugs.append(rollout.task.slug or "")
        self.sink.superseded += 1
        return True

    def _take_matching(self, free: int, warm: dict[str, int]) -> list[tuple[Rollout, int]]:
        """Prefer rollouts whose sandbox kind this worker has warm (mixed-image runs)."""
        while len(self._lookahead) < 4 * self.config.concurrency:
            rollout = self._next_new()
            if rollout is None:
                break
            self._lookahead.append(rollout)
        taken, kept = [], collections.deque()
        for rollout in self._lookahead:
            if len(taken) < free and warm.get(spec_key(rollout), 0) > 0:
                warm[spec_key(rollout)] -= 1
                taken.append((rollout, 1))
            else:
                kept.append(rollout)
        self._lookahead = kept
        return taken

    def _check_spec(self, rollout: Rollout) -> None:
        config = getattr(self, "_spec_config", None)
        if config is None:  # built once: this runs for every new rollout
            config = self._spec_config = RolloutConfig(**self.config.rollout)
        spec = sandbox_spec(rollout, config, 1.0)
        try:
            self.provider.check_spec(spec)
        except UnsupportedSpecError as exc:
            line = f" (task file line {rollout.source_line})" if rollout.source_line else ""
            raise RunAborted(f"task {rollout.task.slug!r}{line}: {exc}") from None
