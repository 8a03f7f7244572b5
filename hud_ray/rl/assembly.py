"""The scheduler's side of a rollout source: which rollout starts next (admission under
the ready buffer and the capacity rule), where each final row goes, when a group is
finished (all its members' rows on disk), and what it becomes — emitted, dropped by the
failure rule, or dropped / started again for staleness. Also the restart: what a resumed
driver finds in the group log and the run's Parquet. Everything here runs under the
source's lock (`self._cond`), on the scheduler's thread or the trainer's.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from hud_ray.results import latest_per_key, read_results
from hud_ray.rl.group_log import LoggedGroup
from hud_ray.rl.groups import (
    Group,
    GroupRequest,
    member_of,
    member_rollouts,
    rl_facts,
    stamp_row,
)
from hud_ray.rl.rules import judge
from hud_ray.tasks import Rollout

log = logging.getLogger("hud_ray.rl")


class LiveGroup(BaseModel):
    """A group the driver is working on (not yet emitted or dropped)."""

    group_id: str
    request: GroupRequest
    round: int = 0
    admitted: bool = False
    rows: dict[str, dict[str, Any]] = {}
    durable: set[str] = set()

    def keys(self) -> list[str]:
        n, slug = self.request.n, self.request.task.slug
        return [f"{self.group_id}.{slug}#{self.round * n + i}" for i in range(n)]


class GroupAssembly:
    """Mixed into `RolloutSource` (source.py), which owns the state it works on."""

    _cond: Any
    _live: dict[str, LiveGroup]

    # --- scheduler side (its thread) --------------------------------------------------
    def next_rollout(self) -> Rollout | None:
        with self._cond:
            if not self._members:
                self._admit()
            return self._members.popleft() if self._members else None

    def exhausted(self) -> bool:
        with self._cond:  # closed, and every submitted group finished
            return (self._closed and not self._queue and not self._members
                    and self._running == 0)

    def take_cancels(self) -> set[str]:
        with self._cond:
            keys, self._cancels = self._cancels, set()
            return keys

    def on_row(self, row: dict[str, Any]) -> None:
        with self._cond:
            stamp_row(row, policy_version_end=self._version)
            live = self._live.get(self._key_group.get(row["rollout_key"], ""))
            if live is not None and row["rollout_key"] in live.keys():
                live.rows[row["rollout_key"]] = dict(row)

    # --- internals ----------------------------------------------------------------------
    def _drive(self) -> None:
        try:
            for batch in self.scheduler.run():
                self._landed(batch.column("rollout_key").to_pylist())
        except BaseException as exc:  # the trainer sees it at its next call
            log.error("rollout source stopped: %s: %s", type(exc).__name__, exc)
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    def _landed(self, keys: list[str]) -> None:
        """Rows now on disk: a group whose every member is on disk is finished."""
        with self._cond:
            for key in keys:
                live = self._live.get(self._key_group.get(key, ""))
                if live is None or key not in live.rows:
                    continue
                live.durable.add(key)
                if len(live.durable & set(live.keys())) == live.request.n:
                    self._finish(live)
            self._cond.notify_all()

    def _finish(self, live: LiveGroup) -> None:
        rows = [live.rows[k] for k in live.keys()]
        started = [rl_facts(r).get("policy_version_start") for r in rows]
        oldest = min((s for s in started if s is not None), default=None)
        if self.staleness.over(self._version, oldest):
            self._over_bound(live, f"a member started at version {oldest}, now "
                             f"{self._version} (max_staleness "
                             f"{self.staleness.policy.max_staleness})")
            return
        self._running -= 1
        verdict = judge(live.request.rule or self.rule, live.request.n, rows)
        del self._live[live.group_id]
        if verdict.reason is not None:
            self.log.append("drop", live.group_id, reason=verdict.reason, kind="rule")
            return
        members = [member_of(live.rows[k], zeroed=k in verdict.zeroed) for k in verdict.kept]
        group = Group(group_id=live.group_id, request=live.request, members=members,
                      dropped=verdict.dropped)
        self.log.append("emit", live.group_id, group=group.model_dump(mode="json"))
        self.staleness.note_emitted(self._version, group.min_version)
        self._emitted += 1
        self._ready.append(group)

    def _over_bound(self, live: LiveGroup, why: str) -> None:
        """A group too stale to train on: dropped, or started again with fresh members."""
        if self.staleness.policy.over_bound == "rerun":
            self.staleness.rerun += 1
            live.round += 1
            live.rows, live.durable, live.admitted = {}, set(), False
            self.log.append("rerun", live.group_id, round=live.round, reason=why)
            self._running -= 1
            self._queue.appendleft(live.group_id)
            return
        self.staleness.dropped += 1
        self._running -= 1
        del self._live[live.group_id]
        self.log.append("drop", live.group_id, reason=why, kind="stale")

    def _still_fresh(self, group: Group) -> bool:
        """At take time: the bound holds against the version now, not at emission."""
        if not self.staleness.over(self._version, group.min_version):
            return True
        why = (f"taken at version {self._version}, a member started at {group.min_version}")
        if self.staleness.policy.over_bound == "rerun":
            live = LiveGroup(group_id=group.group_id, request=group.request,
                         round=self.log.groups[group.group_id].round)
            self._live[group.group_id] = live
            self._running += 1
            self._over_bound(live, why)
        else:
            self.staleness.dropped += 1
            self.log.append("drop", group.group_id, reason=why, kind="stale")
        self._emitted -= 1  # it never counted as trainable after all
        return False

    def _admit(self) -> None:
        """Start the next queued group if the trainer keeps up (ready buffer) and the
        capacity rule allows; its members carry the version they start at."""
        while self._queue:
            if len(self._ready) >= self.max_ready and not self._closed:
                return  # the trainer is not taking groups: start nothing more
            if not self.staleness.may_start(self._version, self._emitted, self._running):
                return
            live = self._live[self._queue.popleft()]
            live.admitted = True
            self._running += 1
            todo = [r for r in member_rollouts(live.group_id, live.request, live.round,
                                               self._version, self.policy_name)
                    if r.rollout_key not in live.rows]
            for rollout in todo:
                self._key_group[rollout.rollout_key] = live.group_id
            if not todo:  # all members were already on disk (a resume)
                self._finish(live)
                continue
            self._members.extend(todo)
            return

    def _recover(self) -> None:
        """Resume: hand out again what was emitted and never acked; finish the rest."""
        table = latest_per_key(read_results(self.run_dir))
        on_disk = {row["rollout_key"]: row for row in table.to_pylist()}
        for logged in self.log.groups.values():
            if logged.state == "emitted":
                self._reemit(logged, on_disk)
            elif logged.state == "submitted":
                live = LiveGroup(group_id=logged.group_id,
                             request=GroupRequest.model_validate(logged.request),
                             round=logged.round)
                for key in live.keys():
                    self._key_group[key] = live.group_id
                    if key in on_disk:
                        live.rows[key] = on_disk[key]
                        live.durable.add(key)
                self._live[live.group_id] = live
                self._queue.append(live.group_id)

    def _reemit(self, logged: LoggedGroup, on_disk: dict[str, dict[str, Any]]) -> None:
        """An emitted group's rows were on disk before it was emitted: reattach them."""
        group = Group.model_validate({**(logged.emitted or {}), "reemitted": True})
        for member in group.members:
            member.row = on_disk.get(member.rollout_key)
        self._emitted += 1
        self._ready.append(group)

