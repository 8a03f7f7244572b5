"""The scheduler's worker actors: how many and where (`_spawn_workers`, `_new_worker`: the
seam where a worker is created), a dead or killed worker replaced (its rollouts requeued as
new attempts, overdue ones ended as `timeout`), what it left reaped by labels, and every
worker shut down at the end (an interrupt keeps only rows that would have been final)."""

from __future__ import annotations

import logging
import math

import ray

from hud_ray.inflight import (
    Flight,
    WorkerSlot,
    failure_row,
    lost_sandbox_labels,
    reap_in_background,
)
from hud_ray.pool import WorkerRequest
from hud_ray.rollout import warm_labels
from hud_ray.schema import Status

log = logging.getLogger("hud_ray.scheduler")
SLOT_RESOURCE = "sandbox_slots"


class WorkersMixin:
    """Worker lifecycle (state lives on the Scheduler)."""

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
