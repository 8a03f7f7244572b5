"""Warm-ahead: sandboxes provisioned before their rollout arrives, so cold start leaves
the critical path. A worker keeps up to `depth` ready sandboxes per sandbox kind (image,
resources, env); a rollout that finds one skips provision and ready, and its taking
triggers the next one's provisioning while it runs.

Off for providers whose idle sandboxes cost money by default (their `warm_ahead`
capability); a run can still ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import defaultdict, deque

from hud_ray.rollout import Prepared, RolloutConfig, sandbox_spec
from hud_ray.tasks import Rollout
from providers import EnvStartError, Provider, SandboxSpec, sandbox_name, shielded

log = logging.getLogger("hud_ray.warm")
STOP_AFTER_FAILURES = 3  # consecutive failed warm-ups: warm no more (rollouts go cold)


def spec_key(rollout: Rollout) -> str:
    """Rollouts with the same key can use each other's warm sandboxes."""
    task = rollout.task
    runtime = task.runtime_config.model_dump(mode="json") if task.runtime_config else None
    return json.dumps([task.env_name, runtime], sort_keys=True)


class WarmPool:
    def __init__(self, provider: Provider, config: RolloutConfig, depth: int,
                 labels: dict[str, str], worker_id: str) -> None:
        self.provider = provider
        self.config = config
        self.depth = depth
        self.labels = labels
        self.worker_id = worker_id
        self._ready: dict[str, deque[Prepared]] = defaultdict(deque)
        self._filling: dict[str, int] = defaultdict(int)
        self._waiters: dict[str, deque[asyncio.Future[Prepared | None]]] = defaultdict(deque)
        self._tasks: set[asyncio.Task[None]] = set()
        self._names = itertools.count()
        self._failures = 0
        self._closed = False
        self._draining = False

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._ready.items() if v}

    async def take(self, rollout: Rollout) -> Prepared | None:
        """A warm sandbox for `rollout` (None: go cold), and start warming its successor.

        A sandbox already warming finishes no later than a cold one started now would,
        so a rollout that finds none ready waits for one in flight rather than racing it.
        """
        key = spec_key(rollout)
        queue, waiters = self._ready[key], self._waiters[key]
        if queue:
            self._refill(key, rollout)
            return queue.popleft()
        if self._filling[key] > len(waiters):
            future: asyncio.Future[Prepared | None] = asyncio.get_running_loop().create_future()
            waiters.append(future)
            self._refill(key, rollout)
            return await future
        self._refill(key, rollout)
        return None

    def _hand_over(self, key: str, prepared: Prepared | None) -> bool:
        """Give a finished warm-up to the first rollout waiting for one."""
        waiters = self._waiters[key]
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(prepared)
                return True
        return False

    def _refill(self, key: str, rollout: Rollout) -> None:
        if self._closed or self._draining or self._failures >= STOP_AFTER_FAILURES:
            return
        spare = len(self._ready[key]) + self._filling[key] - len(self._waiters[key])
        for _ in range(self.depth - spare):
            self._filling[key] += 1
            task = asyncio.get_running_loop().create_task(self._warm(key, rollout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _spec(self, rollout: Rollout) -> SandboxSpec:
        spec = sandbox_spec(rollout, self.config, self.config.deadline_s)
        # Named by run as well as worker: a kept worker (hud_ray.pool) warms again in the
        # next run, and a name it reused would meet the same sim fate in every run.
        name = sandbox_name(self.config.run_id, f"warm/{self.worker_id}/{next(self._names)}",
                            0, self.config.incarnation)
        # It may wait in the pool for a whole rollout before its own begins.
        return spec.model_copy(update={"name": name, "lifetime_s": 2 * spec.lifetime_s})

    async def _warm(self, key: str, rollout: Rollout) -> None:
        handle = None
        t0 = time.monotonic()
        try:
            spec = self._spec(rollout)
            self.provider.check_spec(spec)
            handle = await self.provider.create(spec, self.labels)
            endpoint = await self.provider.ready(handle, spec.startup_timeout_s)
        except asyncio.CancelledError:
            if handle is not None:
                await shielded(self.provider.destroy(handle))
            raise
        except Exception as exc:  # the rollout will go cold and meet the error itself
            # An env that cannot start will not start next time either: stop warming.
            self._failures += STOP_AFTER_FAILURES if isinstance(exc, EnvStartError) else 1
            if self._failures <= STOP_AFTER_FAILURES:  # once per failure run, one line
                first_line = (str(exc).splitlines() or [""])[0]
                log.warning("warm-ahead create failed (%s): %s", type(exc).__name__, first_line)
            if handle is not None:
                with contextlib.suppress(Exception):
                    await shielded(self.provider.destroy(handle))
            self._filling[key] -= 1
            self._hand_over(key, None)
            return
        self._filling[key] -= 1
        self._failures = 0
        prepared = Prepared(handle=handle, endpoint=endpoint, created_at=t0)
        if self._closed or not self._hand_over(key, prepared):
            if self._closed or self._draining:
                await shielded(self.provider.destroy(handle))
            else:
                self._ready[key].append(prepared)

    def drain(self) -> None:
        """No new work is coming: warm no more, free the spares (in-flight warm-ups
        still go to rollouts waiting for them)."""
        self._draining = True
        spare = [p for queue in self._ready.values() for p in queue]
        self._ready.clear()
        for prepared in spare:
            task = asyncio.get_running_loop().create_task(
                shielded(self.provider.destroy(prepared.handle)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Destroy every warm sandbox and stop warming (end of run, shutdown)."""
        self._closed = True
        for key in list(self._waiters):
            while self._hand_over(key, None):
                pass
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        spare = [p for queue in self._ready.values() for p in queue]
        self._ready.clear()
        await asyncio.gather(*(shielded(self.provider.destroy(p.handle)) for p in spare),
                             return_exceptions=True)
