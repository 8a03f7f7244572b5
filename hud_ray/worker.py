"""The Ray worker: an async actor hosting `slots` sandbox slots.

Each slot runs one rollout at a time in its own fresh sandbox (hud_ray.rollout). The
driver talks to a worker with one call, `step(new_items, wait_s)`: hand over new
rollouts and collect the rows that finished since the last call — so dispatch and
harvest are batched into one round trip, and each worker has exactly one call in flight.
Ray's own retries stay off (`max_task_retries=0`): only the scheduler knows a rollout
and its sandbox well enough to decide on a retry.

`watch()` runs in a concurrency group of its own (its own thread and event loop), so it
answers while the main loop is blocked (a sync call in an agent): how long the loop has
been stuck, which rollout's task holds it, and the phase each rollout is really in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import ray

from hud_ray.agents import resolve_agent
from hud_ray.metrics import record_live, record_row
from hud_ray.redact import install_log_scrubber, run_scrubber
from hud_ray.rollout import RolloutConfig, RolloutRunner, warm_labels
from hud_ray.schema import Status
from hud_ray.tasks import Rollout
from hud_ray.warm import WarmPool
from providers import get_provider

# (rollout, attempt) as the driver sends them
WorkItem = tuple[Rollout, int]


class RolloutWorkerImpl:
    """Plain class (testable without Ray); `RolloutWorker` is its Ray actor."""

    def __init__(
        self,
        worker_id: str,
        provider: str,
        provider_options: dict[str, Any],
        agent: Any,
        rollout_config: dict[str, Any],
        slots: int,
        env_vars: dict[str, str] | None = None,
        governor_policy: dict[str, Any] | None = None,
        warm_depth: int = 0,
    ) -> None:
        os.environ.update(env_vars or {})
        install_log_scrubber(run_scrubber(provider_options, env_vars or {}))
        self.worker_id = worker_id
        self.node_id = _node_id()
        self.provider_name = provider
        self.provider_options = provider_options
        self.env_vars = env_vars
        # Kept across runs (hud_ray.pool): the provider instance is what a fresh worker
        # pays for (a local zygote with the env imported, SDK clients and connections).
        self.raw_provider = get_provider(provider, **provider_options)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._begin(agent, rollout_config, slots, governor_policy, warm_depth)

    def _begin(self, agent: Any, rollout_config: dict[str, Any], slots: int,
               governor_policy: dict[str, Any] | None, warm_depth: int) -> None:
        """Everything that belongs to one run: nothing of an earlier run survives it."""
        self.slots = slots
        self.provider = self.raw_provider
        if governor_policy is not None:
            from hud_ray.governor import GovernedProvider, GovernorClient, get_governor

            # The driver already applied the run's policy; a worker only finds the actor
            # (found again each run: the detached governor may have been restarted since).
            governor = get_governor(self.raw_provider, self.provider_options, governor_policy,
                                    self.env_vars, apply_policy=False)
            self.provider = GovernedProvider(
                self.raw_provider, GovernorClient(governor, self.worker_id), self.worker_id,
                self.node_id)
        # One agent, or one per sweep variant ({variant: spec}).
        specs = agent if isinstance(agent, dict) else {None: agent}
        self.agents = {variant: resolve_agent(spec) for variant, spec in specs.items()}
        self.base_config = RolloutConfig(**{**rollout_config, "worker_id": self.worker_id})
        self.pool: WarmPool | None = None
        if warm_depth > 0:
            labels = warm_labels(self.base_config, self.worker_id)
            self.pool = WarmPool(self.provider, self.base_config, warm_depth, labels,
                                 self.worker_id)
        self._runners: dict[str, RolloutRunner] = {}
        self._phases_sent: dict[str, str] = {}
        self._done: list[dict[str, Any]] = []
        self._clocks_sent: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick = time.monotonic()  # the main loop's last sign of life (see watch)

    async def begin_run(self, agent: Any, rollout_config: dict[str, Any], slots: int,
                        governor_policy: dict[str, Any] | None,
                        warm_depth: int) -> dict[str, Any]:
        """A kept worker takes its next run (hud_ray.pool); it must hold nothing of the
        last one (`end_run` left no rollout running, no warm sandbox)."""
        if self._running:
            raise RuntimeError(f"worker {self.worker_id} still runs {len(self._running)} "
                               "rollouts of an earlier run")
        self._begin(agent, rollout_config, slots, governor_policy, warm_depth)
        return await self.ping()

    async def step(self, items: list[WorkItem], wait_s: float,
                   drain: bool = False) -> dict[str, Any]:
        """Start `items`; return rows finished so far (waiting up to `wait_s` for one).
        `drain`: no new work is coming, so stop warming and free the warm sandboxes."""
        self._start_ticker()
        for rollout, attempt in items:
            key = rollout.rollout_key
            if key in self._running:  # never run one rollout twice at once
                continue
            # Named by its key: `watch` tells which rollout holds a blocked loop.
            self._running[key] = asyncio.create_task(self._run(rollout, attempt), name=key)
        if drain and self.pool is not None:
            # After the tasks above have taken their warm sandboxes (call_soon is FIFO).
            asyncio.get_running_loop().call_soon(self.pool.drain)
        if not self._done and wait_s > 0 and self._running:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
        rows, self._done = self._done, []
        # The phase of each running rollout: if this worker's loop later hangs, the
        # driver still knows where each rollout was when it records the timeout.
        # Only what changed since the last reply: the driver keeps the rest, and a worker
        # with hundreds of slots must not resend them all with every row.
        phases = {}
        for key, runner in self._runners.items():
            if self._phases_sent.get(key) != runner.phase:
                phases[key] = self._phases_sent[key] = runner.phase
        # When each deadline clock started (at the grant, after any throttle): once each.
        clocks = {}
        for key, runner in self._runners.items():
            if runner.clock_started is not None and key not in self._clocks_sent:
                clocks[key] = runner.clock_started
                self._clocks_sent.add(key)
        warm = self.pool.counts() if self.pool is not None else {}
        return {"rows": rows, "phases": phases, "clocks": clocks, "warm": warm}

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._loop = asyncio.get_running_loop()
            self._ticker = self._loop.create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while True:
            self._tick = time.monotonic()
            await asyncio.sleep(TICK_S)

    @ray.method(concurrency_group="watch")
    async def watch(self) -> dict[str, Any]:
        """From another thread: is the main loop blocked, by which rollout, and where is
        each rollout? (Attributes only: nothing here waits on the main loop.)"""
        current = asyncio.current_task(self._loop) if self._loop is not None else None
        runners = dict(self._runners)
        return {"loop_lag_s": time.monotonic() - self._tick,
                "current": current.get_name() if current is not None else None,
                "phases": {k: r.phase for k, r in runners.items()},
                "clocks": {k: r.clock_started for k, r in runners.items()
                           if r.clock_started is not None}}

    async def _run(self, rollout: Rollout, attempt: int) -> None:
        config = self.base_config.model_copy(update={"attempt": attempt, "node_id": self.node_id})
        prepared, cancelled = None, False
        try:
            if self.pool is not None and attempt == 1:  # a retry gets a fresh, cold sandbox
                try:
                    prepared = await self.pool.take(rollout)
                except asyncio.CancelledError:
                    # Still a row: the driver counts this rollout in flight until one comes
                    # (without it a cancelled group's run never ended).
                    cancelled = True
            agent = self.agents.get(rollout.variant) or self.agents[next(iter(self.agents))]
            runner = RolloutRunner(rollout, agent, self.provider, config, prepared)
            self._runners[rollout.rollout_key] = runner
            try:
                result = (runner.result_as(Status.CANCELLED, "cancelled before its sandbox")
                          if cancelled else await runner.run())
            except asyncio.CancelledError:
                result = runner.result_as(Status.CANCELLED, "cancelled: the run is shutting down")
            except Exception as exc:  # a bug in our own code: still a row, never lost
                result = runner.result_as(Status.INFRA_ERROR,
                                          f"worker error: {type(exc).__name__}: {exc}")
            row = result.to_row()
            record_row(row)
            row["_fatal"] = result.fatal
            self._done.append(row)
        finally:
            # A kept worker must end its run holding no rollout (hud_ray.pool).
            self._running.pop(rollout.rollout_key, None)
            self._runners.pop(rollout.rollout_key, None)
            self._phases_sent.pop(rollout.rollout_key, None)
            self._clocks_sent.discard(rollout.rollout_key)
        warm = sum(self.pool.counts().values()) if self.pool is not None else 0
        record_live(self.worker_id, self.provider.name, len(self._running) + warm)
        self._wake.set()

    async def cancel(self, keys: list[str]) -> int:
        """Cancel these rollouts (a trainer cancelled their group): each tears its sandbox
        down and ends as a `cancelled` row in the next `step` reply. Returns how many ran."""
        tasks = [self._running[key] for key in keys if key in self._running]
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def end_run(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """End this run here: cancel every rollout (each tears its sandbox down), free
        the warm sandboxes; the rows, and whether the worker is clean to keep (no rollout
        outlived `timeout_s`). The provider stays open for the next run."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        if self.pool is not None:
            await self.pool.close()
        if self.provider is not self.raw_provider:  # governed: flush, stop its pump
            await self.provider.client.close()
        rows, self._done = self._done, []
        return {"rows": rows, "clean": not self._running}

    async def shutdown(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """End the run and close the provider (the worker is about to be killed)."""
        try:
            return (await self.end_run(timeout_s))["rows"]
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.raw_provider.close(), timeout_s)

    async def ping(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "node_id": self.node_id, "pid": os.getpid(),
                "running": len(self._running)}

    async def sandbox_pids(self) -> list[int]:
        """For tests: env-server PIDs this worker's provider owns (local provider)."""
        pids = getattr(self.provider, "alive_pids", None)
        return pids() if pids else []


def _node_id() -> str | None:
    with contextlib.suppress(Exception):
        return ray.get_runtime_context().get_node_id()
    return None


TICK_S = 0.25  # the main loop's heartbeat (watch: lag well past this = blocked)

RolloutWorker = ray.remote(max_restarts=0, max_task_retries=0,
                           concurrency_groups={"watch": 1})(RolloutWorkerImpl)
