"""Deadlines, enforced from outside the worker: a rollout past its deadline (+ grace) that
its worker has not ended gets the worker's watch thread asked why; a blocked event loop
gets the worker killed (the rollout holding it is the `timeout`, its neighbours are
`infra_error` and retried), a healthy one is left to end its own deadlines up to a
backstop."""

from __future__ import annotations

import time
from typing import Any

import ray

from hud_ray.inflight import Flight, WorkerSlot
from hud_ray.tasks import Rollout

LOOP_STALL_S = 2.0  # a worker loop silent this long (it ticks every 0.25 s) is blocked
PROBE_TIMEOUT_S = 2.0  # the watch thread answers in milliseconds unless the process hangs
BACKSTOP_S = 30.0  # past its teardown allowance + this, even a healthy worker is killed
SILENT_S = 3.0  # a `step` unanswered this long: ask the worker's watch thread
PHASES_AFTER_HELLO = ("start", "agent", "grade")


class DeadlinesMixin:
    """Deadline clocks and the watch probe (state lives on the Scheduler)."""

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
