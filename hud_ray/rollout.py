"""One rollout, no Ray: (throttle) → provision → ready → start → agent → grade → teardown.

Under a governor, the rollout first waits for its create grant (`throttle`: the account's
live cap or create rate is saturated, maybe by other drivers) — a phase of its own with its
own limit (`throttle_timeout_s` → `quota_error`, retried), outside the deadline. One
wall-clock deadline then covers provision through grade; on expiry the env gets
`tasks.cancel` and the row says `timeout` with the phase it was in. Teardown runs
shielded from cancellation, so a sandbox is destroyed even when the caller is cancelled.
A failed rollout is a row (see `schema.Status`), never an exception.

The phases live by concern in `hud_ray.runner` (sandbox, task, row); this module runs
them in order and re-exports the names callers import from here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hud_ray.agents import Agent, Session
from hud_ray.deadline_hold import DeadlineHold
from hud_ray.runner.failures import ENV_START_ERROR, RolloutFailure, provider_failure
from hud_ray.runner.row import RowMixin
from hud_ray.runner.sandbox import SandboxStagesMixin
from hud_ray.runner.spec import (
    WARM_ROLLOUT_LABEL,
    Prepared,
    RolloutConfig,
    rollout_labels,
    sandbox_spec,
    warm_labels,
)
from hud_ray.runner.task import TaskStagesMixin
from hud_ray.schema import RolloutResult, Status, utcnow
from hud_ray.tasks import Rollout
from hud_ray.wire import EnvClient
from providers import LABEL_SANDBOX, Provider, SandboxHandle

__all__ = [
    "ENV_START_ERROR", "WARM_ROLLOUT_LABEL", "Prepared", "RolloutConfig", "RolloutFailure",
    "RolloutRunner", "provider_failure", "rollout_labels", "run_rollout", "sandbox_spec",
    "warm_labels",
]


class RolloutRunner(SandboxStagesMixin, TaskStagesMixin, RowMixin):
    """Runs one rollout and remembers how far it got, so a cancelled caller can still
    build the row (`result_as(Status.CANCELLED)`)."""

    def __init__(
        self, rollout: Rollout, agent: Agent, provider: Provider, config: RolloutConfig,
        prepared: Prepared | None = None,
    ) -> None:
        self.rollout = rollout
        self.prepared = prepared
        self.agent = agent
        self.provider = provider
        self.config = config
        limits = rollout.task.runtime_config.limits if rollout.task.runtime_config else None
        self.deadline_s = (limits.run_timeout_s if limits and limits.run_timeout_s
                           else config.deadline_s)
        self.phase = "provision"
        self._phase_at_end: str | None = None  # the phase a failure happened in
        self._clock_wall: float | None = None  # wall time the deadline clock started
        self._hold = DeadlineHold()  # model calls held by an RL pause stop the clock
        self.timings: dict[str, float] = {}
        self.handle: SandboxHandle | None = None
        self.client: EnvClient | None = None
        self.session: Session | None = None
        self.prompt: Any = None
        self.answer: Any = None
        self.grade: dict[str, Any] | None = None
        self.started_at = utcnow()
        self._begun = time.monotonic()
        self._t0 = time.monotonic()  # the deadline clock (reset at the grant)
        self._sandbox_t0: float | None = None
        self._sandbox_s: float | None = None
        self._teardown_error: str | None = None
        self._startup_deadline: float | None = None
        self._env_unresponsive = False
        self._agent_failure: RolloutFailure | None = None
        self._llm_wait = [0.0]  # seconds the agent's model calls waited for admission
        self.verified = False  # a verifier graded this rollout (its grade is the reward)

    @property
    def clock_started(self) -> float | None:
        """Wall time the deadline clock started, moved on by the time it was held."""
        return None if self._clock_wall is None else self._clock_wall + self._hold.held_s()

    async def _keep_alive(self) -> None:
        if self.handle is not None:
            await self.provider.keep_alive(self.handle)

    # --- entry -----------------------------------------------------------------------
    async def run(self) -> RolloutResult:
        try:
            await self._wait_for_grant()
        except RolloutFailure as exc:
            return self._result(exc.status, exc)
        self._t0 = time.monotonic()
        self._clock_wall = time.time()
        deadline = asyncio.timeout(self.deadline_s)
        self._hold.arm(deadline, self._remaining, self._keep_alive,
                       self.provider.keepalive_interval_s())
        try:
            async with deadline:
                await self._phases()
            status, failure = Status.OK, None
        except RolloutFailure as exc:
            status, failure = exc.status, exc
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            status, failure = Status.TIMEOUT, RolloutFailure(
                Status.TIMEOUT, f"deadline of {self.deadline_s:.1f}s passed in phase {self.phase}"
            )
            failure.error_type = type(exc).__name__
            await self._cancel_task()
        finally:
            await self._teardown()
        return self._result(status, failure)

    def result_as(self, status: Status, message: str = "") -> RolloutResult:
        """The row for a rollout that ended from outside (cancelled, worker killed)."""
        failure = RolloutFailure(status, message or f"{status.value} in phase {self.phase}")
        return self._result(status, failure)

    # --- phases, in order --------------------------------------------------------------
    async def _wait_for_grant(self) -> None:
        """Throttle: wait for the governor's create grant before the deadline starts, so
        a saturated account (this run's or another's load) is never charged as timeout."""
        reserve = getattr(self.provider, "reserve_grant", None)
        if self.prepared is not None or reserve is None:
            return
        spec = sandbox_spec(self.rollout, self.config, self.deadline_s)
        labels = {**rollout_labels(self.config, self.rollout.rollout_key),
                  LABEL_SANDBOX: spec.name}
        limit = self.config.throttle_timeout_s
        try:
            await self._timed("throttle", asyncio.wait_for(reserve(spec, labels), limit))
        except TimeoutError:
            raise RolloutFailure(
                Status.QUOTA_ERROR, f"no sandbox create grant within throttle_timeout_s="
                f"{limit:g}: the account's live cap or create rate stayed saturated",
                error_type="Throttled") from None

    async def _phases(self) -> None:
        if self.prepared is None or not await self._timed("ready", self._use_prepared()):
            await self._timed("provision", self._provision())
            endpoint = await self._timed("ready", self._ready())
            await self._timed("ready", self._connect(endpoint))
        await self._timed("start", self._start())
        if self.rollout.task.verifier is None:
            await self._timed("agent", self._run_agent())
            await self._timed("grade", self._grade())
            return
        # hud's verifier rows: the agent's failure does not stop the rollout; the actor
        # task is graded best-effort and the verifier's grade is the grade of record.
        try:
            await self._timed("agent", self._run_agent())
        except RolloutFailure as exc:
            if exc.status not in (Status.AGENT_ERROR, Status.TIMEOUT):
                raise
            self._agent_failure = exc
            self._record_agent_failure(exc)
        actor_grade = await self._timed("grade", self._grade_best_effort())
        await self._timed("grade", self._verify(actor_grade))
        if self._agent_failure is not None:
            self.phase = "agent"  # where it failed (a timeout row names its phase)
            raise self._agent_failure

    async def _timed(self, phase: str, awaitable: Any) -> Any:
        self.phase = phase
        t0 = time.monotonic()
        try:
            return await awaitable
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.monotonic() - t0


async def run_rollout(
    rollout: Rollout, agent: Agent, provider: Provider, config: RolloutConfig | None = None
) -> RolloutResult:
    """Run one rollout to a row. Cancellation tears the sandbox down, then propagates."""
    runner = RolloutRunner(rollout, agent, provider, config or RolloutConfig())
    return await runner.run()
