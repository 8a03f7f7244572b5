"""One rollout, no Ray: (throttle) → provision → ready → start → agent → grade → teardown.

Under a governor, the rollout first waits for its create grant (`throttle`: the account's
live cap or create rate is saturated, maybe by other drivers) — a phase of its own with its
own limit (`throttle_timeout_s` → `quota_error`, retried), outside the deadline. One
wall-clock deadline then covers provision through grade; on expiry the env gets
`tasks.cancel` and the row says `timeout` with the phase it was in. Teardown runs
shielded from cancellation, so a sandbox is destroyed even when the caller is cancelled.
A failed rollout is a row (see `schema.Status`), never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from pydantic import BaseModel

from hud_ray.agents import Agent, Session, agent_name
from hud_ray.deadline_hold import DEADLINE_HOLD, DeadlineHold
from hud_ray.llm_governor import LLM_WAIT
from hud_ray.schema import RolloutResult, Status, utcnow
from hud_ray.tasks import Rollout, task_fingerprint
from hud_ray.trajectory import step_rows, summary
from hud_ray.wire import (
    EnvClient,
    FrameTooLarge,
    NeverAnswered,
    ProtocolError,
    TransportError,
    UnencodableFrame,
    WireError,
    WireTimeout,
)
from providers import (
    LABEL_DRIVER,
    LABEL_INCARNATION,
    LABEL_OWNER,
    LABEL_ROLLOUT,
    LABEL_RUN,
    LABEL_SANDBOX,
    LABEL_WORKER,
    Endpoint,
    EnvStartError,
    Provider,
    ProviderConfigError,
    QuotaError,
    SandboxHandle,
    SandboxSpec,
    sandbox_name,
    shielded,
)


class RolloutConfig(BaseModel):
    run_id: str = "adhoc"
    incarnation: str = ""  # this driver start of the run (hud_ray.incarnation)
    driver: str = ""  # the driver's host:pid:start-time, so a later one can prove it dead
    owner: str = "hud-ray"
    deadline_s: float = 600.0
    ready_timeout_s: float = 120.0
    throttle_timeout_s: float = 600.0  # longest wait for a create grant (then quota_error)
    cancel_timeout_s: float = 5.0
    teardown_timeout_s: float = 60.0
    # Longest pause a sandbox's hard lifetime is budgeted for (an RL rollout source's
    # weight updates: hud_ray.deadline_hold stops the deadline, not a provider's cap).
    pause_budget_s: float = 0.0
    heartbeat_s: float | None = 120.0
    attempt: int = 1
    worker_id: str | None = None
    node_id: str | None = None
    keep_raw: bool = False  # raw model responses in steps (off: they dominate the bytes)
    prices: dict[str, dict[str, float]] = {}  # $/1M tokens by model, over the defaults


class Prepared(BaseModel):
    """A sandbox provisioned ahead of its rollout (warm-ahead): created and ready."""

    model_config = {"arbitrary_types_allowed": True}
    handle: SandboxHandle
    endpoint: Endpoint
    created_at: float  # time.monotonic() when its create began (for sandbox_seconds)


class RolloutFailure(Exception):
    """Internal: ends the phases early with a classified status."""

    def __init__(self, status: Status, exc: BaseException | str, *, fatal: bool = False,
                 error_type: str | None = None) -> None:
        message = exc if isinstance(exc, str) else f"{exc}"
        super().__init__(message)
        self.status = status
        self.error_type = error_type or (
            "RolloutFailure" if isinstance(exc, str) else type(exc).__name__)
        self.fatal = fatal


# error_type of a row whose env server never started serving (it died at start-up, or
# never answered hello): the scheduler stops a run whose first sandbox fails this way.
ENV_START_ERROR = "EnvStartError"

WARM_ROLLOUT_LABEL = "(warm)"  # the rollout label of a sandbox warmed ahead of its rollout


def rollout_labels(config: RolloutConfig, rollout_key: str) -> dict[str, str]:
    labels = {LABEL_RUN: config.run_id, LABEL_ROLLOUT: rollout_key, LABEL_OWNER: config.owner}
    if config.incarnation:
        labels[LABEL_INCARNATION] = config.incarnation
    if config.driver:
        labels[LABEL_DRIVER] = config.driver
    return labels


def warm_labels(config: RolloutConfig, worker_id: str) -> dict[str, str]:
    """A warm sandbox has no rollout yet (and keeps these labels once one claims it): the
    worker that made it is how a reaper finds it after that worker dies."""
    return {**rollout_labels(config, WARM_ROLLOUT_LABEL), LABEL_WORKER: worker_id}


def sandbox_spec(rollout: Rollout, config: RolloutConfig, deadline_s: float) -> SandboxSpec:
    runtime = rollout.task.runtime_config
    limits = runtime.limits if runtime else None
    return SandboxSpec(
        name=sandbox_name(config.run_id, rollout.rollout_key, config.attempt, config.incarnation),
        image=runtime.image if runtime else None,
        compose=runtime.compose if runtime else None,
        env_name=rollout.task.env_name,
        resources=runtime.resources if runtime else None,
        lifetime_s=deadline_s + config.pause_budget_s + config.teardown_timeout_s,
        startup_timeout_s=(limits.startup_timeout_s if limits and limits.startup_timeout_s
                           else config.ready_timeout_s),
    )


class RolloutRunner:
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

    # --- phases ----------------------------------------------------------------------
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

    async def _use_prepared(self) -> bool:
        """Connect to the warm sandbox; if it died while waiting, drop it and go cold."""
        prepared = self.prepared
        assert prepared is not None
        self.handle, self._sandbox_t0 = prepared.handle, prepared.created_at
        self.timings["provision"] = 0.0
        try:
            await self._connect(prepared.endpoint)
            return True
        except RolloutFailure:
            with contextlib.suppress(Exception):
                await shielded(self.provider.destroy(prepared.handle))
            self.handle, self._sandbox_t0, self.client = None, None, None
            return False

    async def _provision(self) -> None:
        spec = sandbox_spec(self.rollout, self.config, self.deadline_s)
        # The exact sandbox name too: a reap after a worker death must find this attempt's
        # sandbox and never a live retry's.
        labels = {**rollout_labels(self.config, self.rollout.rollout_key),
                  LABEL_SANDBOX: spec.name}
        try:
            self.provider.check_spec(spec)
            self._sandbox_t0 = time.monotonic()
            self.handle = await self.provider.create(spec, labels)
            # One startup budget (limits.startup_timeout_s, else ready_timeout_s) covers
            # ready + connect: an env that never serves fails as infra_error (retryable)
            # instead of eating the whole rollout deadline.
            self._startup_deadline = time.monotonic() + spec.startup_timeout_s
        except Exception as exc:
            raise _provider_failure(exc) from None

    async def _ready(self) -> Endpoint:
        assert self.handle is not None
        try:
            return await self.provider.ready(self.handle, self._startup_remaining())
        except Exception as exc:
            raise _provider_failure(exc) from None

    async def _connect(self, endpoint: Endpoint) -> None:
        try:
            self.client = await EnvClient.connect(
                endpoint.url,
                preamble=endpoint.preamble,
                ready_timeout_s=self._startup_remaining(),
                call_timeout_s=self._remaining(),
                heartbeat_s=self.config.heartbeat_s,
            )
        except ProtocolError as exc:  # the env answered `hello` wrongly: the wire rule
            raise RolloutFailure(Status.ENV_ERROR, await self._with_output(exc),
                                 error_type=type(exc).__name__) from None
        except NeverAnswered as exc:  # it accepted, then never answered: the env's fault
            raise RolloutFailure(Status.ENV_ERROR, await self._with_output(exc),
                                 error_type=ENV_START_ERROR) from None
        except WireError as exc:  # refused, reset, EOF until the budget ran out: infra
            raise RolloutFailure(Status.INFRA_ERROR, await self._with_output(exc),
                                 error_type=type(exc).__name__) from None

    async def _start(self) -> None:
        assert self.client is not None
        task = self.rollout.task
        try:
            started = await self.client.start(task.id, task.args, timeout_s=self._remaining())
        except WireError as exc:
            raise await self._wire_failure(exc) from None
        self.prompt = started["prompt"]
        self.session = Session(
            prompt=self.prompt,
            task=task,
            rollout_key=self.rollout.rollout_key,
            bindings=started.get("bindings") or self.client.bindings,
            client=self.client,
        )

    async def _run_agent(self) -> None:
        assert self.session is not None
        waits = LLM_WAIT.set(self._llm_wait)  # the endpoint governor adds admission waits
        hold = DEADLINE_HOLD.set(self._hold)
        try:
            await self._agent_call()
        finally:
            DEADLINE_HOLD.reset(hold)
            LLM_WAIT.reset(waits)
            await self.session.aclose()  # MCP sessions the agent opened: in its own task

    async def _agent_call(self) -> None:
        assert self.session is not None
        agent_timeout = self.rollout.task.agent_timeout_s
        try:
            if agent_timeout is not None and agent_timeout < self._remaining():
                limit = asyncio.timeout(agent_timeout)
                try:
                    async with limit:
                        self.answer = await self.agent(self.session)
                except TimeoutError:
                    if not limit.expired():
                        raise  # the agent's own TimeoutError (an LLM call): agent_error
                    if self.rollout.task.verifier is None:
                        await self._cancel_task()  # a verifier row still grades the task
                    raise RolloutFailure(
                        Status.TIMEOUT, f"agent exceeded agent_config.timeout_seconds={agent_timeout}"
                    ) from None
            else:
                self.answer = await self.agent(self.session)
        except (RolloutFailure, asyncio.CancelledError):
            raise
        # The rollout deadline reaches the agent as CancelledError (asyncio.timeout turns it
        # into TimeoutError only at its own boundary), so a TimeoutError here is the agent's
        # own (an LLM call that timed out): an agent_error, not a retryable infra failure.
        except Exception as exc:
            # A dead control connection means the sandbox went away under the agent.
            if self.client is not None and isinstance(self.client._broken, TransportError):
                raise RolloutFailure(Status.INFRA_ERROR, self.client._broken) from None
            raise RolloutFailure(Status.AGENT_ERROR, exc) from None

    async def _grade(self) -> None:
        assert self.client is not None
        try:
            self.grade = await self.client.grade(self.answer, timeout_s=self._remaining())
        except WireError as exc:
            raise await self._wire_failure(exc) from None

    async def _grade_best_effort(self) -> dict[str, Any]:
        """The actor task's evaluation, as hud's `Run` makes it for a verifier row: a grade
        that fails becomes a zero score carrying the error (the verifier still runs)."""
        assert self.client is not None
        try:
            actor_grade = await self.client.grade(self.answer, timeout_s=self._remaining())
        except (ProtocolError, FrameTooLarge) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            actor_grade = {"score": 0.0, "answer": self.answer, "content": detail,
                           "isError": True}
        except WireError as exc:
            raise await self._wire_failure(exc) from None
        if self.session is not None:
            self.session.record_step("actor_grade", task=self.rollout.task.id, grade=actor_grade)
        return actor_grade

    async def _verify(self, actor_grade: dict[str, Any]) -> None:
        """Start the agent-less verifier task on the same session and grade it with the
        actor's evaluation as its answer (hud's `_verify`)."""
        assert self.client is not None
        verifier = self.rollout.task.verifier
        assert verifier is not None
        try:
            await self.client.start(verifier.id, verifier.args, timeout_s=self._remaining())
            self.grade = await self.client.grade(actor_grade, timeout_s=self._remaining())
        except WireError as exc:
            failure = await self._wire_failure(exc)
            raise RolloutFailure(failure.status, f"verifier {verifier.id!r}: {failure}",
                                 error_type=failure.error_type) from None
        self.verified = True
        if self.session is not None:
            self.session.record_step("verifier_grade", task=verifier.id, grade=self.grade)

    def _record_agent_failure(self, failure: RolloutFailure) -> None:
        if self.session is not None:
            self.session.record_step("agent_error", status=failure.status.value,
                                     error_type=failure.error_type, error=str(failure))

    # --- failure helpers ---------------------------------------------------------------
    async def _wire_failure(self, exc: WireError) -> RolloutFailure:
        """The wire rule (hud_ray/wire.py), the same in every phase: garbage or an error
        from the env is env_error, a broken connection infra_error, silence a timeout."""
        if isinstance(exc, FrameTooLarge) and exc.outgoing and self.phase == "grade":
            # never sent: the agent's answer itself is too big, not the env's fault
            return RolloutFailure(Status.AGENT_ERROR, f"the agent's answer is too large: {exc}",
                                  error_type=type(exc).__name__)
        if isinstance(exc, UnencodableFrame) and self.phase == "grade":
            return RolloutFailure(
                Status.AGENT_ERROR, f"the agent's answer ({type(self.answer).__name__}) is not "
                f"JSON-serialisable: {exc}".replace("cannot encode frame: ", ""),
                error_type=type(exc).__name__)
        if isinstance(exc, ProtocolError):  # includes RemoteError: the env said no
            return RolloutFailure(Status.ENV_ERROR, exc, error_type=type(exc).__name__)
        if isinstance(exc, TransportError):
            return RolloutFailure(Status.INFRA_ERROR, await self._with_output(exc),
                                  error_type=type(exc).__name__)
        return RolloutFailure(Status.TIMEOUT, exc)

    async def _with_output(self, exc: Exception) -> str:
        tail = ""
        if self.handle is not None:
            with contextlib.suppress(Exception):
                tail = await asyncio.wait_for(self.provider.diagnostics(self.handle), 2.0)
        return f"{exc}" + (f"\nenv output:\n{tail}" if tail else "")

    async def _keep_alive(self) -> None:
        if self.handle is not None:
            await self.provider.keep_alive(self.handle)

    @property
    def clock_started(self) -> float | None:
        """Wall time the deadline clock started, moved on by the time it was held."""
        return None if self._clock_wall is None else self._clock_wall + self._hold.held_s()

    def _remaining(self) -> float:
        used = time.monotonic() - self._t0 - self._hold.held_s()
        return max(0.001, self.deadline_s - used)

    def _startup_remaining(self) -> float:
        if self._startup_deadline is None:
            return self._remaining()
        return max(0.001, min(self._remaining(), self._startup_deadline - time.monotonic()))

    async def _cancel_task(self) -> None:
        if self.client is not None and self.phase in ("start", "agent", "grade"):
            try:
                await shielded(self.client.cancel(self.config.cancel_timeout_s))
            except WireTimeout:
                self._env_unresponsive = True  # a hung env: don't wait for a bye reply too
            except (WireError, OSError):
                pass

    async def _teardown(self) -> None:
        # Reported to the driver: a rollout in teardown has teardown_timeout_s more to go.
        self._phase_at_end, self.phase = self.phase, "teardown"
        t0 = time.monotonic()
        try:
            await shielded(asyncio.wait_for(self._release(), self.config.teardown_timeout_s))
        except TimeoutError:
            self._teardown_error = f"teardown timed out after {self.config.teardown_timeout_s}s"
        except Exception as exc:
            self._teardown_error = f"teardown: {type(exc).__name__}: {exc}"
        finally:
            self.timings["teardown"] = time.monotonic() - t0
            if self._sandbox_t0 is not None:
                self._sandbox_s = time.monotonic() - self._sandbox_t0

    async def _release(self) -> None:
        release = getattr(self.provider, "release_grant", None)
        if self.handle is None and release is not None:  # granted, never created
            release(sandbox_spec(self.rollout, self.config, self.deadline_s).name)
        if self.client is not None:
            if self._env_unresponsive:
                await self.client.close()
            else:
                await self.client.bye()
        if self.handle is not None:
            await self.provider.destroy(self.handle)

    # --- the row -----------------------------------------------------------------------
    def _result(self, status: Status, failure: RolloutFailure | None) -> RolloutResult:
        task = self.rollout.task
        message = str(failure) if failure else None
        steps = self.session.steps if self.session else []
        typed = step_rows(steps, keep_raw=self.config.keep_raw)
        governed = getattr(self.agent, "llm_limits", None) is not None
        trajectory = summary(typed, prices=self.config.prices,
                             llm_wait_s=self._llm_wait[0] if governed else None)
        for row in typed:
            row["run_id"], row["rollout_key"] = self.config.run_id, self.rollout.rollout_key
        if self._teardown_error:
            message = f"{message}; {self._teardown_error}" if message else self._teardown_error
        return RolloutResult(
            run_id=self.config.run_id,
            rollout_key=self.rollout.rollout_key,
            slug=task.slug or "",
            env=task.env_name,
            template_id=task.id,
            args=task.args,
            task_fingerprint=task_fingerprint(task),
            group_id=self.rollout.group_id,
            repeat=self.rollout.repeat,
            variant=self.rollout.variant,
            agent=agent_name(self.agent),
            provider=self.provider.name,
            sandbox_id=self.handle.sandbox_id if self.handle else None,
            worker_id=self.config.worker_id,
            node_id=self.config.node_id,
            status=status,
            timeout_phase=(self._phase_at_end or self.phase) if status is Status.TIMEOUT else None,
            error_type=failure.error_type if failure else None,
            error_message=message,
            fatal=bool(failure and failure.fatal),
            attempts=self.config.attempt,
            reward=(float(self.grade["score"])
                    if self.grade and (status is Status.OK or self.verified) else None),
            grade=self.grade,
            answer=_as_text(self.answer),
            prompt=_as_text(self.prompt),
            steps=steps if self.config.keep_raw else _without_raw(steps),
            step_rows=typed,
            **trajectory,
            columns=task.columns,
            started_at=self.started_at,
            finished_at=utcnow(),
            throttle_s=self.timings.get("throttle"),
            provision_s=self.timings.get("provision"),
            ready_s=self.timings.get("ready"),
            start_s=self.timings.get("start"),
            agent_s=self.timings.get("agent"),
            grade_s=self.timings.get("grade"),
            teardown_s=self.timings.get("teardown"),
            total_s=time.monotonic() - self._begun,
            sandbox_seconds=self._sandbox_s,
        )


def _provider_failure(exc: Exception) -> RolloutFailure:
    """A provider's error in its class: config (fatal), quota, or infra (retryable)."""
    if isinstance(exc, ProviderConfigError):
        return RolloutFailure(Status.INFRA_ERROR, exc, fatal=True)
    if isinstance(exc, EnvStartError):
        return RolloutFailure(Status.ENV_ERROR, exc, error_type=ENV_START_ERROR)
    if isinstance(exc, QuotaError):
        return RolloutFailure(Status.QUOTA_ERROR, exc)
    return RolloutFailure(Status.INFRA_ERROR, exc)


def _without_raw(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps JSON without raw provider responses (kept only when asked for)."""
    out = []
    for step in steps:
        inner = step.get("step")
        if step.get("kind") == "hud" and isinstance(inner, dict) and "raw" in inner:
            step = {**step, "step": {k: v for k, v in inner.items() if k != "raw"}}
        elif "raw" in step:
            step = {k: v for k, v in step.items() if k != "raw"}
        out.append(step)
    return out


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)


async def run_rollout(
    rollout: Rollout, agent: Agent, provider: Provider, config: RolloutConfig | None = None
) -> RolloutResult:
    """Run one rollout to a row. Cancellation tears the sandbox down, then propagates."""
    runner = RolloutRunner(rollout, agent, provider, config or RolloutConfig())
    return await runner.run()
