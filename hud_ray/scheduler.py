"""The driver: lazy task stream → bounded in-flight window → workers → Parquet.

- The window is the total number of slots; the task file is read only as slots free up,
  so driver memory does not grow with the task file.
- Each worker has exactly one `step` call in flight; it carries new rollouts in and
  finished rows out (dispatch and harvest batched into one round trip).
- `infra_error` / `quota_error` rows are retried in a new sandbox (a new attempt → a new
  sandbox name), on another worker when there is one, after exponential back-off with
  jitter; only the final attempt is written.
- A dead worker (ActorDiedError / ActorUnavailableError) is replaced; its rollouts are
  requeued as new attempts and their sandboxes reaped through the provider's labels.
- A fatal row (bad credentials, a spec the provider cannot honour) stops the run.

The loop is here; what it decides about lives in `hud_ray.scheduling` (intake, outcomes,
deadlines, workers), mixed into `Scheduler`.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.exceptions import RayActorError

from hud_ray.incarnation import driver_identity, new_incarnation
from hud_ray.inflight import Flight, WorkerSlot
from hud_ray.leftovers import sweep_leftovers
from hud_ray.pool import worker_pool
from hud_ray.results import ResultWriter
from hud_ray.rollout import RolloutConfig
from hud_ray.scheduling.deadlines import (
    BACKSTOP_S,
    LOOP_STALL_S,
    PHASES_AFTER_HELLO,
    PROBE_TIMEOUT_S,
    SILENT_S,
    DeadlinesMixin,
)
from hud_ray.scheduling.errors import RunAborted
from hud_ray.scheduling.intake import IntakeMixin
from hud_ray.scheduling.outcomes import OutcomesMixin
from hud_ray.scheduling.workers import SLOT_RESOURCE, WorkersMixin
from hud_ray.tasks import Rollout
from providers import Provider

__all__ = [
    "BACKSTOP_S", "LOOP_STALL_S", "PHASES_AFTER_HELLO", "PROBE_TIMEOUT_S", "SILENT_S",
    "SLOT_RESOURCE", "RunAborted", "Scheduler", "SchedulerConfig",
]


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    run_id: str
    provider: str
    provider_options: dict[str, Any] = Field(default_factory=dict)
    agent: Any
    concurrency: int = Field(8, ge=1)
    workers: int | None = Field(None, ge=1)
    max_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0
    step_wait_s: float = 0.5
    deadline_grace_s: float = 5.0
    max_worker_replacements: int = 20
    max_failures: int | None = None
    max_failure_fraction: float | None = None
    rollout: dict[str, Any] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict)
    governor: dict[str, Any] | None = Field(
        default_factory=dict, description="governor policy overrides; None = no governor")
    heartbeat_s: float = 5.0
    resume: bool = False
    warm_per_slot: float = 0.0
    probe_first: bool = Field(
        True, description="run one rollout until its env has answered hello before fanning "
        "out: a broken env stops the run after one sandbox, not after N x max_attempts")

    def worker_count(self) -> int:
        if self.workers:
            return min(self.workers, self.concurrency)
        return max(1, min(self.concurrency, -(-self.concurrency // 64)))


class Scheduler(IntakeMixin, OutcomesMixin, DeadlinesMixin, WorkersMixin):
    """One run: the dispatch/harvest loop over the workers, yielding Parquet batches."""

    def __init__(
        self,
        config: SchedulerConfig,
        rollouts: Iterator[Rollout],
        sink: ResultWriter,
        provider: Provider,
        *,
        skip_keys: dict[str, int | None] | set[str] | None = None,
        progress: Any = None,
        close_sink: bool = True,
    ) -> None:
        self.config = config
        self.close_sink = close_sink  # a sweep closes its shared sink after its last pass
        self.source = rollouts
        self.sink = sink
        self.provider = provider
        self.skip_keys = skip_keys or set()
        self.progress = progress
        self.workers: list[WorkerSlot] = []
        self._retry_heap: list[tuple[float, int, Rollout, int]] = []
        self._tiebreak = itertools.count()
        self._source_done = False
        self._lookahead: collections.deque[Rollout] = collections.deque()
        self._kinds_seen: set[str] = set()
        self._replacements = 0
        self._failures = 0
        self._finished = 0
        self._abort: str | None = None
        self._stop = threading.Event()
        self._reapers: list[threading.Thread] = []
        self.governor: Any = None
        self._has_slots: bool | None = None
        self._last_heartbeat = 0.0
        self._lease_s = 0.0  # this run's own lease, sent with each heartbeat (governor only)
        self.step_replies = 0  # harvested `step` calls: rows per reply is the batching
        # Until one sandbox of this run has said hello, only one rollout is in flight.
        self._probing = config.probe_first
        self.changed_slugs: list[str] = []  # resumed rollouts rerun: their task changed
        # This driver start of the run: its sandboxes, governor marks and parts carry it.
        # (A sweep's passes share a writer but not an incarnation: each pass finishes.)
        self.incarnation = new_incarnation()
        self.driver = driver_identity()
        self.rollout_config = RolloutConfig(**{
            **config.rollout, "run_id": config.run_id, "incarnation": self.incarnation,
            "driver": self.driver})
        self._pool = worker_pool()  # workers kept across runs (hud_ray/pool.py)

    # --- public --------------------------------------------------------------------------
    def run(self) -> Iterator[pa.RecordBatch]:
        """Drive the run; yield each Parquet batch as it is written."""
        if self.config.governor is not None:
            from hud_ray.governor import GovernorPolicy, get_governor

            default_lease = GovernorPolicy.model_fields["run_lease_s"].default
            self._lease_s = float(self.config.governor.get("run_lease_s", default_lease))
            self.governor = get_governor(self.provider, self.config.provider_options,
                                         self.config.governor, self.config.env_vars)
            if self.config.resume:  # what earlier incarnations left alive is orphaned now
                ray.get(self.governor.reap_run.remote(self.config.run_id, self.incarnation),
                        timeout=300)
        # The governor above forgets what a dead private Ray held: the provider's own
        # records (labels, local's on-disk ledger) do not.
        sweep_leftovers(self.config.provider, self.config.provider_options,
                        self.config.run_id, self.incarnation, self.rollout_config.owner,
                        resume=self.config.resume)
        self._spawn_workers()
        try:
            while not self._stop.is_set():
                self._heartbeat()
                self._dispatch()
                if self._idle():
                    break
                self._harvest()
                self._enforce_deadlines()
                self.sink.maybe_flush()
                yield from self.sink.take_batches()
                if self._abort:
                    raise RunAborted(self._abort)
            self.sink.flush()
            yield from self.sink.take_batches()
        except BaseException as exc:
            self._teardown(interrupted=True)
            state = "aborted" if isinstance(exc, RunAborted) else "interrupted"
            self.sink.close(state, error=str(exc) or type(exc).__name__)
            raise
        self._teardown(interrupted=False)
        if self.close_sink:
            self.sink.close("finished")

    def stop(self) -> None:
        self._stop.set()

    # --- the loop ----------------------------------------------------------------------
    def _dispatch(self) -> None:
        for worker in sorted(self.workers, key=lambda w: len(w.inflight) - w.slots):
            if worker.step_ref is not None:
                continue  # one call in flight per worker; it returns as soon as a row lands
            items = self._take(worker.slots - len(worker.inflight), worker)
            now = time.monotonic()
            for rollout, attempt in items:
                worker.inflight[rollout.rollout_key] = Flight(
                    rollout, attempt, now, self._deadline_s(rollout))
            drain = (self._source_done and not self._retry_heap and not self._lookahead
                     and not worker.drained)
            worker.drained = worker.drained or drain
            if worker.inflight or items or drain:
                worker.step_ref = worker.actor.step.remote(items, self.config.step_wait_s, drain)
                worker.step_sent = time.monotonic()

    def _idle(self) -> bool:
        return (self._source_done and not self._retry_heap and not self._lookahead
                and all(not w.inflight and w.step_ref is None for w in self.workers))

    def _harvest(self) -> None:
        refs = {w.step_ref: w for w in self.workers if w.step_ref is not None}
        if not refs:
            wait = self._retry_heap[0][0] - time.monotonic() if self._retry_heap else 0.05
            self._stop.wait(max(0.0, min(wait, 0.5)))
            return
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
        for ref in ready:
            self._take_reply(refs[ref])

    def _take_reply(self, worker: WorkerSlot) -> None:
        """Land the rows of the worker's `step` reply (ready), note its progress."""
        ref, worker.step_ref = worker.step_ref, None
        try:
            reply = ray.get(ref)
            self.step_replies += 1
        except RayActorError as exc:
            self._replace(worker, exc)
            return
        for row in reply["rows"]:
            self._land(row, worker.inflight.pop(row["rollout_key"], None))
        worker.warm = reply.get("warm", {})
        self._note_progress(worker, reply)

    def _heartbeat(self) -> None:
        """Tell the governor this run is alive; without it the reaper takes its sandboxes."""
        if self.governor is None:
            return
        now = time.monotonic()
        every = min(self.config.heartbeat_s, self._lease_s / 3)  # a few beats per lease
        if now - self._last_heartbeat >= every:
            self._last_heartbeat = now
            self.governor.heartbeat.remote(self.config.run_id, self._lease_s, self.incarnation)
