"""One row per finished rollout: the pydantic model and the Arrow schema it lands in.

Anyone can read a run with pyarrow.dataset, duckdb, polars or pandas: JSON-ish values
(args, grade, steps, columns) are stored as JSON strings, times as UTC timestamps. The
trajectory's numbers (turns, tool calls, tokens, model, cost) are typed columns, and its
steps a dataset of their own (`runs/<id>/steps/`, `hud_ray.trajectory.step_schema`).
Schema version 2 added those columns; version-1 parts read back with them NULL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Status(StrEnum):
    OK = "ok"
    AGENT_ERROR = "agent_error"
    ENV_ERROR = "env_error"
    TIMEOUT = "timeout"
    INFRA_ERROR = "infra_error"
    QUOTA_ERROR = "quota_error"
    CANCELLED = "cancelled"


RETRYABLE = frozenset({Status.INFRA_ERROR, Status.QUOTA_ERROR})
PHASES = ("throttle", "provision", "ready", "start", "agent", "grade", "teardown")


class RolloutResult(BaseModel):
    run_id: str = ""
    rollout_key: str
    slug: str
    env: str | None = None
    template_id: str
    args: dict[str, Any] = Field(default_factory=dict)
    # sha256 (16 hex) of the task row minus slug and columns: a resume reruns a rollout
    # whose task changed under the same slug (hud_ray.tasks.task_fingerprint).
    task_fingerprint: str | None = None
    group_id: str
    repeat: int = 0
    variant: str | None = None
    agent: str = ""
    provider: str = ""
    sandbox_id: str | None = None
    worker_id: str | None = None
    node_id: str | None = None
    status: Status
    timeout_phase: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    fatal: bool = Field(False, description="a config error: the run should stop")
    attempts: int = 1
    reward: float | None = None
    grade: dict[str, Any] | None = None
    answer: str | None = None
    prompt: str | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    columns: dict[str, Any] = Field(default_factory=dict)
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Waiting for the governor's create grant (live cap / create rate): before the
    # deadline clock, bounded by its own limit (throttle_timeout_s → quota_error).
    throttle_s: float | None = None
    provision_s: float | None = None
    ready_s: float | None = None
    start_s: float | None = None
    agent_s: float | None = None
    grade_s: float | None = None
    teardown_s: float | None = None
    total_s: float | None = None
    sandbox_seconds: float | None = None
    # The trajectory, typed (hud_ray/trajectory.py): what every rollout has is a column.
    n_turns: int | None = None
    n_tool_calls: int | None = None
    n_tool_errors: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    stop_reason: str | None = None
    llm_s: float | None = None
    llm_wait_s: float | None = None
    cost_usd: float | None = None
    step_rows: list[dict[str, Any]] = Field(
        default_factory=list, description="typed steps for runs/<id>/steps/ (not a column)")

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE and not self.fatal

    def to_row(self) -> dict[str, Any]:
        """The rollouts/ row; its typed steps ride along under `_steps` (for steps/)."""
        # A shallow copy, not model_dump: every field is a plain value (no nested models),
        # and the JSON columns are encoded right below (this runs once per rollout).
        row = {k: getattr(self, k) for k in _ROW_FIELDS}
        row["status"] = Status(self.status).value
        for key in ("args", "grade", "steps", "columns"):
            row[key] = None if row[key] is None else json.dumps(row[key], default=str)
        row["_steps"] = self.step_rows
        return row


_ROW_FIELDS = tuple(k for k in RolloutResult.model_fields if k not in ("fatal", "step_rows"))


def utcnow() -> datetime:
    return datetime.now(UTC)


def _fields() -> list[tuple[str, Any]]:
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return [
        ("run_id", pa.string()), ("rollout_key", pa.string()), ("slug", pa.string()),
        ("env", pa.string()), ("template_id", pa.string()), ("args", pa.string()),
        ("task_fingerprint", pa.string()), ("group_id", pa.string()), ("repeat", pa.int32()), ("variant", pa.string()),
        ("agent", pa.string()), ("provider", pa.string()), ("sandbox_id", pa.string()),
        ("worker_id", pa.string()), ("node_id", pa.string()), ("status", pa.string()),
        ("timeout_phase", pa.string()), ("error_type", pa.string()),
        ("error_message", pa.string()), ("attempts", pa.int32()), ("reward", pa.float64()),
        ("grade", pa.string()), ("answer", pa.string()), ("prompt", pa.string()),
        ("steps", pa.string()), ("columns", pa.string()),
        ("queued_at", ts), ("started_at", ts), ("finished_at", ts),
        ("throttle_s", pa.float64()),
        ("provision_s", pa.float64()), ("ready_s", pa.float64()), ("start_s", pa.float64()),
        ("agent_s", pa.float64()), ("grade_s", pa.float64()), ("teardown_s", pa.float64()),
        ("total_s", pa.float64()), ("sandbox_seconds", pa.float64()),
        ("n_turns", pa.int32()), ("n_tool_calls", pa.int32()), ("n_tool_errors", pa.int32()),
        ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
        ("model", pa.string()), ("stop_reason", pa.string()), ("llm_s", pa.float64()),
        ("llm_wait_s", pa.float64()), ("cost_usd", pa.float64()),
    ]


def arrow_schema() -> Any:
    import pyarrow as pa

    # 2: task_fingerprint (rows of version 1 have none; a resume keeps them as they are),
    #    throttle_s, and the trajectory columns (n_turns ... cost_usd; NULL in version 1)
    return pa.schema(_fields(), metadata={"hud_ray.schema_version": "2"})
