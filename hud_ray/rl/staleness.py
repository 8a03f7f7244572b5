"""Bounded staleness: how many groups may be started, and which finished ones are too old.

Two rules, as the async trainers have them (shared/notes: AReaL's staleness manager,
SkyRL's fully-async capacity, verl's quota):

- **Capacity** (admission): with `B` groups consumed per policy version and bound `S`, a
  new group may start only while `started_ok + running < (S + v + 1) · B`, where `v` is
  the current version, `started_ok` the groups emitted so far and `running` those started
  and not finished. A trainer that takes `B` groups per version never gets one that
  started more than `S` versions before it is taken — so little work is wasted.
- **Bound** (the guarantee): a group whose oldest member started more than `S` versions
  behind the current one is never handed out, whatever the trainer's pace: it is checked
  when the group completes and again when the trainer takes it. Such a group is dropped
  or started again with fresh members (`over_bound`), and counted either way.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StalenessPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_staleness: int | None = Field(
        None, ge=0, description="versions a member may start behind the current one "
        "(None: unbounded)")
    groups_per_step: int | None = Field(
        None, ge=1, description="groups the trainer takes per policy version (B); enables "
        "the capacity rule")
    over_bound: Literal["drop", "rerun"] = "drop"


class Staleness:
    """Counts and decisions; the source calls it under its lock."""

    def __init__(self, policy: StalenessPolicy) -> None:
        self.policy = policy
        self.dropped = 0  # groups over the bound, dropped
        self.rerun = 0  # groups over the bound, started again
        self.max_lag_emitted = 0  # the worst lag of any group handed out (<= S always)

    def may_start(self, version: int, emitted: int, running: int) -> bool:
        p = self.policy
        if p.max_staleness is None or p.groups_per_step is None:
            return True
        return emitted + running < (p.max_staleness + version + 1) * p.groups_per_step

    def over(self, version: int, started_at: int | None) -> bool:
        p = self.policy
        if p.max_staleness is None or started_at is None:
            return False
        return version - started_at > p.max_staleness

    def note_emitted(self, version: int, started_at: int | None) -> None:
        if started_at is not None:
            self.max_lag_emitted = max(self.max_lag_emitted, version - started_at)

    def report(self) -> dict[str, int | None]:
        return {"max_staleness": self.policy.max_staleness, "stale_dropped": self.dropped,
                "stale_rerun": self.rerun, "max_lag_emitted": self.max_lag_emitted}
