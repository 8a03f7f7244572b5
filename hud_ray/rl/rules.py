"""What makes a finished group trainable: the failure rule.

A member's final row arrives after the scheduler has already retried infrastructure
failures (`infra_error`, `quota_error`) in fresh sandboxes, up to `max_attempts`, without
the group noticing — so a sandbox that failed to start never costs a group its baseline.
What is left to judge is the member's final status:

- `ok`: kept, with its reward.
- `agent_error` / `timeout` (the policy's own failure): `on_agent_error` decides —
  `zero_reward` keeps it with reward 0 (GRPO sees a bad sample, the usual choice),
  `drop_member` leaves it out, `drop_group` voids the whole group.
- anything else (infra retries exhausted, `env_error`, `quota_error`): not the policy's
  fault, so it never earns a reward; the member is left out.

A group with fewer than `min_ok` kept members is dropped (counted, reported, never
emitted as trainable).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hud_ray.schema import Status

POLICY_FAILURES = frozenset({Status.AGENT_ERROR, Status.TIMEOUT})


class GroupRule(BaseModel):
    """The failure rule of a rollout source (see the module doc)."""

    model_config = ConfigDict(extra="forbid")
    min_ok: int | None = Field(
        None, ge=1, description="fewest kept members a group may have (default: all n)")
    on_agent_error: Literal["zero_reward", "drop_member", "drop_group"] = "zero_reward"


class Verdict(BaseModel):
    """The rule's judgement of one group's final rows."""

    kept: list[str] = Field(default_factory=list, description="rollout keys, trainable")
    zeroed: list[str] = Field(default_factory=list, description="kept with reward 0")
    dropped: list[str] = Field(default_factory=list, description="rollout keys left out")
    reason: str | None = Field(None, description="why the whole group is dropped (None: emit)")


def judge(rule: GroupRule, n: int, rows: list[dict[str, Any]]) -> Verdict:
    """Apply `rule` to a group of `n` members whose final rows are `rows`."""
    verdict = Verdict()
    for row in sorted(rows, key=lambda r: r["repeat"]):
        key, status = row["rollout_key"], Status(row["status"])
        if status is Status.OK and row.get("reward") is not None:
            verdict.kept.append(key)
        elif status in POLICY_FAILURES and rule.on_agent_error == "zero_reward":
            verdict.kept.append(key)
            verdict.zeroed.append(key)
        elif status in POLICY_FAILURES and rule.on_agent_error == "drop_group":
            verdict.dropped = [r["rollout_key"] for r in rows]
            verdict.kept, verdict.zeroed = [], []
            verdict.reason = f"member {key} ended {status.value} (on_agent_error=drop_group)"
            return verdict
        else:
            verdict.dropped.append(key)
    need = rule.min_ok if rule.min_ok is not None else n
    if len(verdict.kept) < need:
        verdict.reason = (f"{len(verdict.kept)} of {n} members trainable, min_ok is {need} "
                          f"(dropped: {', '.join(verdict.dropped)})")
    return verdict
