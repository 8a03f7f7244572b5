"""The durable group log: `<run_dir>/rl/groups.jsonl`, one JSON record per line, each
appended and fsynced before the driver acts on it.

Records (`op`): `submit` (the request), `rerun` (a stale group started again, new member
keys), `emit` (the group, as handed to the trainer), `drop` (never trainable: the failure
rule or staleness, with the reason), `cancel`, `consumed` (the trainer's mark). Replaying
the log tells a restarted driver, per group: consumed → never again; emitted but not
consumed → hand it out again; submitted only → finish it (members already in Parquet
are not rerun); dropped/cancelled → done. A torn last line (a crash mid-write) is
ignored: its action was never taken.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

LOG_DIR = "rl"
LOG_FILE = "groups.jsonl"


class LoggedGroup(BaseModel):
    """One group's state, as the log has it."""

    group_id: str
    request: dict[str, Any]
    round: int = 0  # reruns after staleness: member keys of round r are repeats r*n..r*n+n-1
    emitted: dict[str, Any] | None = None
    state: str = "submitted"  # submitted | emitted | dropped | cancelled | consumed
    reason: str | None = None


class GroupLog:
    """Append-only, fsynced; `replay()` rebuilds every group's state."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOG_DIR / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.groups: dict[str, LoggedGroup] = {}
        self.torn_lines = 0
        if self.path.exists():
            self._replay()
        self._fh = self.path.open("a", encoding="utf-8")
        if self._fh.tell() and not self.path.read_bytes().endswith(b"\n"):
            self._fh.write("\n")  # end the torn line: the next record must not join it

    def _replay(self) -> None:
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self.torn_lines += 1
                    continue
                self._apply(record)

    def _apply(self, record: dict[str, Any]) -> None:
        op, gid = record["op"], record["group_id"]
        if op == "submit":
            self.groups[gid] = LoggedGroup(group_id=gid, request=record["request"])
            return
        group = self.groups[gid]
        if op == "rerun":  # started again with fresh members: as if just submitted
            group.round, group.state, group.emitted = record["round"], "submitted", None
        elif op == "emit":
            group.state, group.emitted = "emitted", record["group"]
        elif op in ("drop", "cancel"):
            group.state = "dropped" if op == "drop" else "cancelled"
            group.reason = record.get("reason")
        elif op == "consumed":
            group.state = "consumed"

    def append(self, op: str, group_id: str, **fields: Any) -> None:
        """Write one record durably (fsync), then apply it to the in-memory state."""
        record = {"op": op, "group_id": group_id, **fields}
        if self._fh.closed:  # acks of groups taken after the source was closed
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._apply(record)

    def count(self, state: str) -> int:
        return sum(1 for g in self.groups.values() if g.state == state)

    def close(self) -> None:
        self._fh.close()

