"""The governor's policy and its ledger's entries (one per granted sandbox create)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field


class GovernorPolicy(BaseModel):
    """Set by the run that starts the account's governor; a later run's explicit settings
    change it for every driver on the account (`configure`). Table: docs/cluster.md."""

    create_rate: float = Field(10.0, description="sandbox creates per second, all drivers")
    live_cap: int = Field(256, description="most sandboxes alive at once, all drivers")
    min_rate: float = Field(0.2, description="AIMD floor for create_rate")
    increase_per_s: float = Field(0.5, description="AIMD: creates/s added back per quiet second")
    decrease_factor: float = Field(0.5, description="AIMD: rate multiplier on a quota error")
    quota_cooldown_s: float = Field(5.0, description="no increase this long after a quota error")
    run_lease_s: float = Field(30.0, description="a run without heartbeat this long is dead: "
                               "its sandboxes are reaped")
    reap_interval_s: float = Field(2.0, description="seconds between reaper passes")
    deadline_grace_s: float = Field(30.0, description="a sandbox past its lifetime by this "
                                    "much is reaped, its run alive or not")
    # A worker killed mid-create, or a cloud that finishes the request anyway, can make a
    # sandbox appear after the reaper first looked for it.
    create_grace_s: float = Field(300.0, description="a granted create whose answer never "
                                  "came is looked for by label this long after the grant "
                                  "(and counts against live_cap meanwhile)")


@dataclass
class LedgerEntry:
    name: str
    run_id: str
    rollout_key: str
    labels: dict[str, str]
    deadline: float
    worker_id: str
    node_id: str | None = None
    handle: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    incarnation: str = ""  # the driver start that asked for it ("" = an old client)
    doomed: bool = False  # chosen by the reaper: an orphan now, whatever comes later
    looks: int = 0  # label searches so far for a create that never answered
    next_look: float = 0.0


def _life(entry: LedgerEntry) -> str:
    """What an entry's liveness hangs on: its incarnation (its run id for old clients)."""
    return entry.incarnation or entry.run_id
