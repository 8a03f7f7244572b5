"""What a trainer sends (`GroupRequest`) and what it gets back (`Group` of `Member`s)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hud_ray.rl.rules import GroupRule
from hud_ray.tasks import Rollout, Task

RL_COLUMN = "rl"  # the task column (and row column) where a member's RL facts live


class GroupRequest(BaseModel):
    """`n` rollouts of one task, trained on together (one GRPO group).

    `sampling` (temperature, top_p, max_tokens, ...) reaches the agent as
    `session.task.columns["rl"]["sampling"]`; `meta` is the trainer's own (a prompt id,
    a dataset index) and comes back with the group."""

    model_config = ConfigDict(extra="forbid")
    task: Task
    n: int
    sampling: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)
    rule: GroupRule | None = Field(None, description="this group's failure rule "
                                   "(default: the source's)")


class Member(BaseModel):
    """One rollout of a group, as the trainer sees it; `row` is its full Parquet row
    (token ids and logprobs are in the run's `steps/` dataset under `rollout_key`)."""

    rollout_key: str
    index: int
    status: str
    reward: float | None
    zeroed: bool = Field(False, description="reward set to 0 by the failure rule")
    error: str | None = None
    answer: str | None = None
    attempts: int = 1
    version_start: int | None = None
    version_end: int | None = None
    row: dict[str, Any] | None = Field(None, exclude=True)

    def tokens(self) -> list[Any]:
        """Its turns merged into trainable sequences (`hud_ray.rl.tokens.merge`)."""
        from hud_ray.rl.tokens import merge, turns_of

        if self.row is None:
            raise ValueError(f"member {self.rollout_key}: its row is not loaded")
        return merge(turns_of(self.row))


class Group(BaseModel):
    """A complete, trainable group; handed out once (`RolloutSource.ack` marks it)."""

    group_id: str
    request: GroupRequest
    members: list[Member]
    dropped: list[str] = Field(default_factory=list, description="members left out by the rule")
    reemitted: bool = Field(False, description="handed out before a driver restart, never acked")

    @property
    def rewards(self) -> list[float]:
        return [m.reward for m in self.members if m.reward is not None]

    @property
    def min_version(self) -> int | None:
        starts = [m.version_start for m in self.members if m.version_start is not None]
        return min(starts) if starts else None


def member_rollouts(group_id: str, request: GroupRequest, round_: int,
                    version: int, policy: str | None = None) -> list[Rollout]:
    """The group's `n` rollouts for `round_` (0, or k after k staleness reruns): keys
    `<group_id>.<slug>#<round*n + i>`, unique within the run, stable across restarts."""
    task = request.task
    rollouts = []
    for i in range(request.n):
        columns = {**task.columns, RL_COLUMN: {
            "group_id": group_id, "index": i, "round": round_, "sampling": request.sampling,
            "policy_version_start": version, "policy": policy}}
        member_task = task.model_copy(update={"slug": f"{group_id}.{task.slug}",
                                              "columns": columns})
        rollouts.append(Rollout(task=member_task, repeat=round_ * request.n + i))
    return rollouts


def rl_facts(row: dict[str, Any]) -> dict[str, Any]:
    """The `rl` column facts of a row (its `columns` is JSON text in a row)."""
    columns = row.get("columns")
    if isinstance(columns, str):
        columns = json.loads(columns)
    return dict((columns or {}).get(RL_COLUMN) or {})


def stamp_row(row: dict[str, Any], **facts: Any) -> None:
    """Add facts (the version at the end) to a row's `rl` column, in place."""
    columns = json.loads(row["columns"]) if row.get("columns") else {}
    columns.setdefault(RL_COLUMN, {}).update(facts)
    row["columns"] = json.dumps(columns, default=str)


def member_of(row: dict[str, Any], zeroed: bool) -> Member:
    facts = rl_facts(row)
    return Member(
        rollout_key=row["rollout_key"], index=int(facts.get("index", row["repeat"])),
        status=row["status"], reward=0.0 if zeroed else row.get("reward"), zeroed=zeroed,
        error=row.get("error_message"), answer=row.get("answer"),
        attempts=int(row.get("attempts") or 1),
        version_start=facts.get("policy_version_start"),
        version_end=facts.get("policy_version_end"), row=row)
