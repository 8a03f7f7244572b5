"""The row of one rollout, built from how far it got (also for one ended from outside)."""

from __future__ import annotations

import json
import time
from typing import Any

from hud_ray.agents import agent_name
from hud_ray.runner.failures import RolloutFailure
from hud_ray.schema import RolloutResult, Status, utcnow
from hud_ray.tasks import task_fingerprint
from hud_ray.trajectory import step_rows, summary


class RowMixin:
    """`_result` of `RolloutRunner` (state lives on the runner)."""

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
        # Every value is built here from typed sources: construct, not validate (one row
        # per rollout: validation was ≈ 2 % of a worker's CPU in B1).
        return RolloutResult.model_construct(
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
