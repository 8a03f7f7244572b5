"""A long-lived rollout source for an RL trainer.

    with RolloutSource("pkg.agent:run", provider="docker", concurrency=256,
                       rule={"min_ok": 6, "on_agent_error": "zero_reward"},
                       staleness={"max_staleness": 1, "groups_per_step": 32}) as source:
        for task in first_batch:
            source.submit(task, n=8, sampling={"temperature": 1.0})
        for group in source:                      # complete groups, as they finish
            train_on(group)
            source.ack(group.group_id)            # consumed: never handed out again
            source.set_policy(version=step + 1)   # new weights
            source.submit(next_task(), n=8)

Each member is an ordinary hud_ray rollout (any provider, any agent) and lands in the
run's Parquet (`<out>/<run_id>/rollouts/`); workers and warm sandboxes stay up between
steps. A group is handed out once, whole, after its rows are on disk, and recorded in the
group log (`<run_dir>/rl/groups.jsonl`): a driver restarted with `resume=True` hands out
again only what was emitted and never acked, finishes what was started (members already
in Parquet are not rerun) and never repeats a consumed group.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hud_ray.rl.assembly import GroupAssembly, LiveGroup
from hud_ray.rl.group_log import GroupLog, LoggedGroup
from hud_ray.rl.groups import (
    Group,
    GroupRequest,
)
from hud_ray.rl.rules import GroupRule
from hud_ray.rl.staleness import Staleness, StalenessPolicy
from hud_ray.tasks import Rollout, Task

log = logging.getLogger("hud_ray.rl")


class SourceClosedError(RuntimeError):
    """submit() after close()."""


class SourceFullError(RuntimeError):
    """Too many groups submitted and not yet taken: the trainer must take some first."""


class SourceStarvedError(RuntimeError):
    """next_group() without a timeout, and no group is queued, running or ready: it would
    wait forever (a trainer that submits only after taking groups, whose last groups were
    dropped)."""


class RolloutSource(GroupAssembly):
    """See the module doc. Thread-safe; the trainer side is `submit`, iteration /
    `next_group`, `ack`, `cancel`, `set_policy`, `close`."""

    def __init__(self, agent: Any, provider: str = "local", *, out: str | Path = "runs",
                 run_id: str | None = None, resume: bool = False, concurrency: int = 8,
                 rule: GroupRule | dict[str, Any] | None = None,
                 staleness: StalenessPolicy | dict[str, Any] | None = None,
                 max_ready_groups: int = 64, max_outstanding_groups: int = 4096,
                 workers: int | None = None, timeout_s: float = 600.0, max_attempts: int = 3,
                 flush_s: float = 0.25, governor: Any = True, warm: float | None = None,
                 provider_options: dict[str, Any] | None = None,
                 agent_config: dict[str, Any] | None = None,
                 llm_limits: dict[str, Any] | None = None, step_wait_s: float = 0.1,
                 retry_backoff_s: float = 1.0, version: int = 0,
                 policy: dict[str, Any] | None = None, max_pause_s: float = 600.0,
                 **provider_kwargs: Any) -> None:
        from hud_ray.api import new_run_id
        from hud_ray.rl.build import build_scheduler
        from hud_ray.rl.policy import actor_name, check_endpoint, start_policy_actor

        self.rule = rule if isinstance(rule, GroupRule) else GroupRule(**(rule or {}))
        bound = (staleness if isinstance(staleness, StalenessPolicy)
                 else StalenessPolicy(**(staleness or {})))
        self.staleness = Staleness(bound)
        for name, value in (("max_ready_groups", max_ready_groups),
                            ("max_outstanding_groups", max_outstanding_groups)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        self.max_ready = max_ready_groups
        self.max_pause_s = max_pause_s
        self._paused_at: float | None = None
        self._long_pauses = 0  # pauses longer than max_pause_s (sandbox lifetimes budget)
        self.max_outstanding = max_outstanding_groups
        self._cond = threading.Condition()
        self._version = self._check_version(version, None)
        self._queue: collections.deque[str] = collections.deque()  # submitted, not started
        self._members: collections.deque[Rollout] = collections.deque()  # to start now
        self._live: dict[str, LiveGroup] = {}
        self._ready: collections.deque[Group] = collections.deque()
        self._cancels: set[str] = set()
        self._key_group: dict[str, str] = {}
        self._running = 0  # groups started and not finished (the capacity rule's count)
        self._emitted = 0
        self._taken = 0
        self._closed = False
        self._error: BaseException | None = None
        policy = dict(policy or {})
        unknown = sorted(set(policy) - {"base_url", "model", "keep_partial"})
        if unknown:
            raise ValueError(f"policy: unknown key(s) {', '.join(unknown)} (known: base_url, "
                             "model, keep_partial)")
        if policy.get("base_url"):
            check_endpoint(policy["base_url"], policy.get("model"))
        run_id = run_id or new_run_id()
        self.policy_name = actor_name(run_id)
        if isinstance(agent, str) and agent.startswith("openai:"):
            # The built-in agent's model calls follow the policy (hud_ray.rl.policy).
            agent_config = {**(agent_config or {}), "policy": self.policy_name}
        self.scheduler, self.run_dir = build_scheduler(
            agent, provider, self, out=out, run_id=run_id, resume=resume,
            concurrency=concurrency, workers=workers, timeout_s=timeout_s,
            max_attempts=max_attempts, flush_s=flush_s, governor=governor, warm=warm,
            provider_options={**provider_kwargs, **(provider_options or {})},
            agent_config=agent_config, llm_limits=llm_limits, step_wait_s=step_wait_s,
            retry_backoff_s=retry_backoff_s, max_pause_s=max_pause_s)
        self.policy_actor = start_policy_actor(run_id, self._version, policy.get("base_url"),
                                               policy.get("model"),
                                               bool(policy.get("keep_partial")))
        self.log = GroupLog(self.run_dir)
        if resume:
            self._recover()
        self._thread = threading.Thread(target=self._drive, name="hud-ray-rl", daemon=True)
        self._thread.start()

    # --- trainer side ----------------------------------------------------------------
    def submit(self, task: Task | dict[str, Any], n: int, sampling: dict[str, Any] | None = None,
               meta: dict[str, Any] | None = None,
               rule: GroupRule | dict[str, Any] | None = None) -> str:
        """Queue a group of `n` rollouts of `task` (`rule`: this group's failure rule, if
        not the source's); returns its group id."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"group size n must be a whole number >= 1, got {n!r}")
        task = task if isinstance(task, Task) else Task.model_validate(task)
        request = GroupRequest(task=task, n=n, sampling=sampling or {}, meta=meta or {},
                               rule=GroupRule.model_validate(rule) if rule else None)
        with self._cond:
            self._raise_if_failed()
            if self._closed:
                raise SourceClosedError("submit() after close(): this rollout source takes "
                                        "no more groups")
            outstanding = len(self._live) + len(self._ready)
            if outstanding >= self.max_outstanding:
                raise SourceFullError(
                    f"{outstanding} groups submitted and not yet taken "
                    f"(max_outstanding_groups={self.max_outstanding}): take finished groups "
                    "(iterate the source) before submitting more")
            group_id = f"g{len(self.log.groups):07d}"
            self.log.append("submit", group_id, request=request.model_dump(mode="json"))
            self._live[group_id] = LiveGroup(group_id=group_id, request=request)
            self._queue.append(group_id)
            self._cond.notify_all()
        return group_id

    def next_group(self, timeout_s: float | None = None) -> Group | None:
        """The next complete group; None once the source is closed and everything is out
        (or after `timeout_s` with nothing ready: check `closed`/`stats()` to tell).

        Without `timeout_s`, when no group is queued, running or ready it raises
        `SourceStarvedError` rather than wait forever: groups can be dropped (staleness,
        failure rule), so a trainer that submits only after taking must submit more first.
        A trainer whose groups come from another thread's `submit()` passes `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                self._raise_if_failed()
                while self._ready:
                    group = self._ready.popleft()
                    if self._still_fresh(group):
                        self._taken += 1
                        self._cond.notify_all()  # room in the ready buffer: admit more
                        return group
                if self._closed and not self._thread.is_alive():
                    return None
                if deadline is None and not self._closed and not self._live:
                    raise SourceStarvedError(self._starved_message())
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(0.5 if wait is None else min(wait, 0.5))

    def __iter__(self) -> Iterator[Group]:
        while (group := self.next_group()) is not None:
            yield group

    async def __aiter__(self) -> Any:
        import asyncio

        while (group := await asyncio.to_thread(self.next_group)) is not None:
            yield group

    def ack(self, group_id: str) -> None:
        """The trainer has consumed the group: a restarted driver never hands it out again."""
        with self._cond:
            logged = self._logged(group_id)
            if logged.state != "emitted":
                raise ValueError(f"ack({group_id!r}): the group is {logged.state}, not emitted")
            self.log.append("consumed", group_id)

    def cancel(self, group_id: str) -> None:
        """Give a group up: its queued members never start, its running ones are cancelled
        and their sandboxes torn down, wherever they are; it is never handed out."""
        with self._cond:
            logged = self._logged(group_id)
            if logged.state in ("consumed", "cancelled", "dropped"):
                return
            live = self._live.pop(group_id, None)
            self._ready = collections.deque(g for g in self._ready if g.group_id != group_id)
            self.log.append("cancel", group_id, reason="cancelled by the trainer")
            if live is None:
                return
            keys = set(live.keys())
            self._members = collections.deque(r for r in self._members
                                              if r.rollout_key not in keys)
            if group_id in self._queue:
                self._queue.remove(group_id)
            if live.admitted:
                self._running -= 1
                self._cancels |= keys
            self._cond.notify_all()

    def set_policy(self, version: int, base_url: str | None = None,
                   model: str | None = None) -> None:
        """The trainer's current policy: members started from now on carry `version`,
        staleness is measured against it, and agents' next model calls go to `base_url`
        / `model` (unchanged when not given) and are recorded with it."""
        import ray

        from hud_ray.rl.policy import check_endpoint

        with self._cond:
            self._check_version(version, self._version)
        if base_url:
            check_endpoint(base_url, model)  # an unknown endpoint: one clear error
        ray.get(self.policy_actor.set.remote(version, base_url, model), timeout=60)
        with self._cond:
            self._version = version
            self._cond.notify_all()

    def pause(self, mode: str = "hold", timeout_s: float | None = None) -> None:
        """Before a weight update: `drain` (block new model calls, return when in-flight
        ones have finished), `hold` (block new calls, return now) or `abort` (cancel
        in-flight calls, to be sent again after `resume`). Sandboxes stay up; agents see
        a slow call, never an error."""
        import ray

        if mode not in ("drain", "hold", "abort"):
            raise ValueError(f"pause mode must be 'drain', 'hold' or 'abort', got {mode!r}")
        ray.get(self.policy_actor.pause.remote(mode), timeout=timeout_s)
        with self._cond:
            self._paused_at = self._paused_at or time.monotonic()

    def resume(self) -> None:
        """After the weight update: blocked and aborted model calls go (to the new policy)."""
        import ray

        ray.get(self.policy_actor.resume.remote(), timeout=60)
        with self._cond:
            paused_at, self._paused_at = self._paused_at, None
        if paused_at is not None and time.monotonic() - paused_at > self.max_pause_s:
            self._long_pauses += 1
            log.warning("the pause lasted %.0f s, longer than max_pause_s=%s: sandboxes' hard "
                        "lifetimes (Modal's timeout, Daytona's TTL) were budgeted for "
                        "timeout_s + max_pause_s, so members may have lost theirs (they "
                        "are retried as infra errors); raise max_pause_s",
                        time.monotonic() - paused_at, self.max_pause_s)

    def policy_state(self) -> dict[str, Any]:
        import ray

        return ray.get(self.policy_actor.snapshot.remote(), timeout=60)

    @property
    def version(self) -> int:
        return self._version

    def close(self, cancel: bool = False, timeout_s: float | None = None) -> None:
        """No more submissions. Groups already submitted still finish and can be taken
        (unless `cancel`: then they are cancelled). Returns when the rollouts are done and
        the run directory is closed."""
        with self._cond:
            self._closed = True
            pending = list(self._live) if cancel else []
        for group_id in pending:
            self.cancel(group_id)
        self._thread.join(timeout_s)
        with self._cond:
            self.log.close()
            self._cond.notify_all()

    def __enter__(self) -> RolloutSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(cancel=exc[0] is not None)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"version": self._version, "submitted": len(self.log.groups),
                    "running": self._running, "queued": len(self._queue),
                    "ready": len(self._ready), "emitted": self._emitted,
                    "taken": self._taken, "consumed": self.log.count("consumed"),
                    "dropped": self.log.count("dropped"),
                    "cancelled": self.log.count("cancelled"),
                    "long_pauses": self._long_pauses, **self.staleness.report()}

    def _starved_message(self) -> str:
        dropped = self.log.count("dropped")
        return (f"next_group() would wait forever: no group is queued, running or ready "
                f"({len(self.log.groups)} submitted, {self._taken} taken, {dropped} dropped "
                f"— {self.staleness.dropped} as stale); submit() more groups first, or pass "
                "timeout_s to wait for another thread's submit()")

    def _logged(self, group_id: str) -> LoggedGroup:
        logged = self.log.groups.get(group_id)
        if logged is None:
            raise KeyError(f"no group {group_id!r} in this rollout source")
        return logged

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the rollout source stopped: {type(self._error).__name__}: "
                               f"{self._error}") from self._error

    @staticmethod
    def _check_version(version: Any, current: int | None) -> int:
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"policy version must be a whole number >= 0, got {version!r}")
        if current is not None and version < current:
            raise ValueError(f"policy version {version} is older than the current "
                             f"{current}: versions only move forward")
        return version
