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
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.exceptions import RayActorError

from hud_ray.incarnation import driver_identity, new_incarnation
from hud_ray.inflight import (
    Flight,
    WorkerSlot,
    failure_row,
    lost_sandbox_labels,
    reap_in_background,
)
from hud_ray.leftovers import sweep_leftovers
from hud_ray.pool import WorkerRequest, worker_pool
from hud_ray.results import ResultWriter
from hud_ray.rollout import ENV_START_ERROR, RolloutConfig, sandbox_spec, warm_labels
from hud_ray.schema import RETRYABLE, Status
from hud_ray.tasks import Rollout, TaskFileError, task_fingerprint
from hud_ray.warm import spec_key
from providers import Provider, UnsupportedSpecError

log = logging.getLogger("hud_ray.scheduler")
SLOT_RESOURCE = "sandbox_slots"
LOOP_STALL_S = 2.0  # a worker loop silent this long (it ticks every 0.25 s) is blocked
PROBE_TIMEOUT_S = 2.0  # the watch thread answers in milliseconds unless the process hangs
BACKSTOP_S = 30.0
SILENT_S = 3.0  # a `step` unanswered this long: ask the worker's watch thread  # past its teardown allowance + this, even a healthy worker is killed


PHASES_AFTER_HELLO = ("start", "agent", "grade")


class RunAborted(RuntimeError):
    """The run stopped early (fatal config error, error budget). Rows so far are kept."""


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


class Scheduler:
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

    # --- workers ---------------------------------------------------------------------
    def _spawn_workers(self) -> None:
        count = self.config.worker_count()
        if not self.config.workers and not self._cluster_has_slots():
            # A worker is one event loop: more of them than cores only adds contention
            # (bench/RESULTS.md, B1 on 2 cores: 2 workers 610 rollouts/s, 8 workers 410/s).
            cpus = int(ray.cluster_resources().get("CPU", 0))
            count = min(count, cpus) if cpus >= 1 else count
        base, extra = divmod(self.config.concurrency, count)
        for i in range(count):
            self.workers.append(self._new_worker(i, base + (1 if i < extra else 0)))

    def _new_worker(self, index: int, slots: int) -> WorkerSlot:
        # On a cluster that declares sandbox slots (cluster.yaml: `sandbox_slots`), workers
        # are placed by slots, not CPUs: a node holds as many sandboxes as it declares.
        resources = {SLOT_RESOURCE: slots} if self._cluster_has_slots() else {}
        # hud_ray.pool: a worker kept from an earlier run with the same provider config,
        # else a new one.
        actor, worker_id = self._pool.acquire(WorkerRequest(
            self.config.provider, self.config.provider_options, self.config.env_vars,
            resources, max_concurrency=max(8, slots * 2),
            run=(self.config.agent, self.rollout_config.model_dump(), slots,
                 self.config.governor, math.ceil(slots * self.config.warm_per_slot))), index)
        return WorkerSlot(index=index, actor=actor, slots=slots, worker_id=worker_id)

    def _cluster_has_slots(self) -> bool:
        if self._has_slots is None:
            self._has_slots = ray.cluster_resources().get(SLOT_RESOURCE, 0) > 0
        return self._has_slots

    def _replace(self, worker: WorkerSlot, error: Exception | str,
                 overdue: set[str] | None = None) -> None:
        """Requeue a dead (or killed) worker's rollouts; overdue ones end as `timeout`."""
        reason = error if isinstance(error, str) else f"worker died: {type(error).__name__}: {error}"
        log.warning("worker %s: %s; %d rollouts affected", worker.index, reason,
                    len(worker.inflight))
        lost = list(worker.inflight.values())
        worker.inflight.clear()
        self._reap(lost, worker)
        if self.governor is not None:
            self.governor.worker_gone.remote(worker.worker_id)
        for flight in lost:
            if overdue and flight.rollout.rollout_key in overdue:
                row = failure_row(flight, self.config, Status.TIMEOUT, reason)
                self._write(row)
                continue
            row = failure_row(flight, self.config, Status.INFRA_ERROR, reason)
            self._after_failure(flight.rollout, flight.attempt, row)
        self._pool.discard(worker.worker_id)
        self._replacements += 1
        if self._replacements > self.config.max_worker_replacements:
            self._abort = f"{self._replacements} workers died; giving up (last: {error})"
            return
        fresh = self._new_worker(worker.index, worker.slots)
        self.workers[self.workers.index(worker)] = fresh

    def _reap(self, lost: list[Flight], worker: WorkerSlot | None = None) -> None:
        """Destroy what a dead worker left behind, found by labels (in the background):
        its rollouts' sandboxes and, not counting on the governor, its warm ones."""
        labels = [lost_sandbox_labels(self.config.run_id, f.rollout.rollout_key, f.attempt,
                                      self.incarnation) for f in lost]
        if worker is not None and self.config.warm_per_slot > 0:
            labels.append(warm_labels(self.rollout_config, worker.worker_id))
        if labels:
            self._reapers.append(reap_in_background(
                self.config.provider, self.config.provider_options, labels))

    # --- dispatch ----------------------------------------------------------------------
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
        spec = sandbox_spec(rollout, RolloutConfig(**self.config.rollout), 1.0)
        try:
            self.provider.check_spec(spec)
        except UnsupportedSpecError as exc:
            line = f" (task file line {rollout.source_line})" if rollout.source_line else ""
            raise RunAborted(f"task {rollout.task.slug!r}{line}: {exc}") from None

    def _idle(self) -> bool:
        return (self._source_done and not self._retry_heap and not self._lookahead
                and all(not w.inflight and w.step_ref is None for w in self.workers))

    # --- harvest -----------------------------------------------------------------------
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

    def _note_progress(self, worker: WorkerSlot, reply: dict[str, Any]) -> None:
        """Phases and deadline clocks the worker reported (a step reply or `watch`)."""
        for key, phase in reply.get("phases", {}).items():
            if key in worker.inflight:
                worker.inflight[key].phase = phase
            if phase in PHASES_AFTER_HELLO:
                self._probing = False  # an env of this run has answered hello
        for key, clock_at in reply.get("clocks", {}).items():
            if key in worker.inflight:
                worker.inflight[key].clock_at = clock_at

    def _deadline_s(self, rollout: Rollout) -> float:
        limits = rollout.task.runtime_config.limits if rollout.task.runtime_config else None
        return (limits.run_timeout_s if limits and limits.run_timeout_s
                else self.rollout_config.deadline_s)

    def _answer_due(self, flight: Flight) -> float:
        """Wall time by which a healthy worker has ended this rollout's deadline itself."""
        rc, grace = self.rollout_config, self.config.deadline_grace_s
        if flight.clock_at is None:  # still throttled (or not reported): its own limit first
            return (flight.sent_wall + rc.throttle_timeout_s + flight.deadline_s
                    + rc.teardown_timeout_s + grace)
        if flight.phase == "teardown":
            return flight.clock_at + flight.deadline_s + rc.teardown_timeout_s + grace
        return flight.clock_at + flight.deadline_s + grace

    def _enforce_deadlines(self) -> None:
        """A rollout past its deadline (+ grace) that its worker has not ended: ask the
        worker's watch thread why. A blocked event loop (a sync call in an agent) gets
        the worker killed: the rollout holding the loop is the `timeout`, in the phase it
        is really in; its neighbours are `infra_error` and retried. A healthy loop ends its
        own deadlines (teardown included) and is left alone, up to a backstop."""
        now = time.time()
        for worker in list(self.workers):
            if not worker.inflight or now < worker.next_probe:
                continue
            # A healthy worker answers `step` within step_wait_s: one silent for longer may
            # have blocked before it could even report its rollouts' clocks and phases.
            silent = (worker.step_ref is not None
                      and time.monotonic() - worker.step_sent > SILENT_S)
            overdue = {k for k, f in worker.inflight.items() if now > self._answer_due(f)}
            if not overdue and not silent:
                continue
            verdict = self._probe(worker)
            worker.next_probe = now + 1.0
            if verdict is not None:
                self._note_progress(worker, verdict)
                overdue = {k for k, f in worker.inflight.items() if now > self._answer_due(f)}
            if not overdue:
                continue
            blocked = verdict is None or verdict["loop_lag_s"] >= LOOP_STALL_S
            backstop = self.rollout_config.teardown_timeout_s + BACKSTOP_S
            if not blocked and all(now < self._answer_due(worker.inflight[k]) + backstop
                                   for k in overdue):
                continue
            self._kill_overdue(worker, overdue, verdict)

    def _probe(self, worker: WorkerSlot) -> dict[str, Any] | None:
        try:
            return ray.get(worker.actor.watch.remote(), timeout=PROBE_TIMEOUT_S)
        except Exception:  # dead, or even its watch thread cannot answer (GIL held)
            return None

    def _kill_overdue(self, worker: WorkerSlot, overdue: set[str],
                      verdict: dict[str, Any] | None) -> None:
        if worker.step_ref is not None and ray.wait([worker.step_ref], timeout=0)[0]:
            # Rows it finished before we gave up on it are kept, not rerun.
            self._take_reply(worker)
            if worker not in self.workers:
                return  # it died meanwhile and was replaced
            overdue &= set(worker.inflight)
            if not overdue:
                return
        current = verdict.get("current") if verdict else None
        if current in worker.inflight:
            culprits = {current}
            lag = verdict["loop_lag_s"] if verdict else 0.0
            reason = (f"rollout {current} blocked its worker's event loop for {lag:.0f}s, "
                      f"past its deadline of {worker.inflight[current].deadline_s:g}s; "
                      "worker killed")
        else:
            culprits = overdue
            grace = self.config.deadline_grace_s
            state = "no answer from it" if verdict is None else "its loop is stuck"
            reason = (f"worker did not end rollouts past their deadline (+{grace:g}s grace): "
                      f"{state}; worker killed")
        ray.kill(worker.actor, no_restart=True)
        self._replace(worker, reason, culprits)

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

    def _heartbeat(self) -> None:
        """Tell the governor this run is alive; without it the reaper takes its sandboxes."""
        if self.governor is None:
            return
        now = time.monotonic()
        every = min(self.config.heartbeat_s, self._lease_s / 3)  # a few beats per lease
        if now - self._last_heartbeat >= every:
            self._last_heartbeat = now
            self.governor.heartbeat.remote(self.config.run_id, self._lease_s, self.incarnation)

    # --- teardown ----------------------------------------------------------------------
    def _teardown(self, interrupted: bool) -> None:
        if self.changed_slugs:
            slugs = list(dict.fromkeys(self.changed_slugs))
            shown = ", ".join(slugs[:10]) + (f" (+{len(slugs) - 10} more)" if len(slugs) > 10 else "")
            log.warning("%d rollout(s) ran again because their task changed since they ran "
                        "under the same slug: %s", len(self.changed_slugs), shown)
        refs = [w.actor.end_run.remote() for w in self.workers]
        ray.wait(refs, num_returns=len(refs), timeout=90)
        returned: list[tuple[str, bool]] = []  # (worker id, clean: may serve the next run)
        for worker, ref in zip(self.workers, refs, strict=True):
            try:
                reply = ray.get(ref, timeout=0)
            except Exception as exc:  # dead or stuck: what it held goes to the reaper
                log.warning("worker %s shutdown: %s", worker.index, exc)
                self._reap(list(worker.inflight.values()), worker)
                returned.append((worker.worker_id, False))
                continue
            returned.append((worker.worker_id, reply["clean"]))
            if interrupted:
                for row in reply["rows"]:
                    if self._final(row):
                        self.sink.add(row)
                self._reap(list(worker.inflight.values()))
        self._pool.release(returned)  # clean ones are kept for the next run, others killed
        for thread in self._reapers:
            thread.join(timeout=60)
        if self.governor is not None:
            try:
                ray.get(self.governor.run_finished.remote(self.config.run_id, self.incarnation),
                        timeout=60)
            except Exception as exc:
                log.warning("governor run_finished: %s", exc)
