"""A rollout's task on the wire: `tasks.start`, the agent, `tasks.grade` — and for hud's
verifier rows the actor task graded best-effort, then the verifier's grade of record. Every
wire error is classified by one rule (`_wire_failure`, see hud_ray/wire.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from hud_ray.agents import Session
from hud_ray.deadline_hold import DEADLINE_HOLD
from hud_ray.llm_governor import LLM_WAIT
from hud_ray.runner.failures import RolloutFailure
from hud_ray.schema import Status
from hud_ray.wire import (
    FrameTooLarge,
    ProtocolError,
    TransportError,
    UnencodableFrame,
    WireError,
)


class TaskStagesMixin:
    """The task phases of `RolloutRunner` (state lives on the runner)."""

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
        hold = DEADLINE_HOLD.set(self._hold)  # an RL pause stops the deadline clock
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
