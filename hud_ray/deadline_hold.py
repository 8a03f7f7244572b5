"""Stop a rollout's deadline clock while its model calls are held from outside it.

An RL trainer pauses model calls for a weight update (hud_ray.rl.policy): an agent
waiting on that pause is not slow, and a weight update can outlast any rollout deadline.
The rollout arms a `DeadlineHold` with its `asyncio.timeout` and sets it in
`DEADLINE_HOLD` around the agent; whatever blocks a model call for a pause wraps the wait
in `hold.holding()`. While any call of the rollout is held the deadline is off; when the
last one goes, the deadline comes back with the time it had left, and the held time is
added to the wall clock the worker reports (`clock_started`), so the driver's deadline
watch moves with it; and the sandbox's idle timer is reset on the provider's period
(`Provider.keep_alive`: Daytona's auto-stop), since nothing else talks to it meanwhile.
The task's own agent timeout is not extended.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

log = logging.getLogger(__name__)

DEADLINE_HOLD: contextvars.ContextVar[DeadlineHold | None] = contextvars.ContextVar(
    "hud_ray_deadline_hold", default=None)


class DeadlineHold:
    def __init__(self) -> None:
        self._timeout: asyncio.Timeout | None = None
        self._remaining: Callable[[], float] | None = None
        self._keep_alive: Callable[[], Awaitable[None]] | None = None
        self._every_s: float | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._held = 0
        self._since: float | None = None
        self._total_s = 0.0

    def arm(self, timeout: asyncio.Timeout, remaining: Callable[[], float],
            keep_alive: Callable[[], Awaitable[None]] | None = None,
            every_s: float | None = None) -> None:
        """The deadline to hold and how much of it is left (held time excluded); while
        held, `keep_alive()` every `every_s` (the sandbox's idle timer: nothing else
        talks to it meanwhile)."""
        self._timeout, self._remaining = timeout, remaining
        self._keep_alive, self._every_s = keep_alive, every_s

    def held_s(self) -> float:
        """Seconds the deadline has been held so far (the current hold included)."""
        current = time.monotonic() - self._since if self._since is not None else 0.0
        return self._total_s + current

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self._held += 1
        if self._held == 1:
            self._since = time.monotonic()
            self._reschedule(None)
            if self._keep_alive is not None and self._every_s is not None:
                self._keeper = asyncio.get_running_loop().create_task(self._keep())
        try:
            yield
        finally:
            self._held -= 1
            if self._held == 0 and self._since is not None:
                if self._keeper is not None:
                    self._keeper.cancel()
                    self._keeper = None
                self._total_s += time.monotonic() - self._since
                self._since = None
                if self._remaining is not None:
                    self._reschedule(asyncio.get_running_loop().time() + self._remaining())

    async def _keep(self) -> None:
        assert self._keep_alive is not None and self._every_s is not None
        while True:
            await asyncio.sleep(self._every_s)  # a period, not a synchronisation
            try:
                await self._keep_alive()
            except Exception as exc:  # the next period tries again; the rollout goes on
                log.warning("keeping the sandbox alive during a pause failed: %s", exc)

    def _reschedule(self, when: float | None) -> None:
        timeout = self._timeout
        if timeout is None or timeout.expired():
            return  # already firing: the rollout ends as a timeout, as it would have
        with contextlib.suppress(RuntimeError):  # left its block: nothing to hold
            timeout.reschedule(when)
