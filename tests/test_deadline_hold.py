"""DeadlineHold (hud_ray/deadline_hold.py): a held deadline does not fire, comes back with
the time it had left, and the sandbox is kept alive on the provider's period meanwhile."""

from __future__ import annotations

import asyncio
import time

import pytest

from hud_ray.deadline_hold import DeadlineHold


def test_a_held_deadline_waits_and_keeps_the_sandbox_alive_then_comes_back():
    async def main() -> None:
        hold, kept = DeadlineHold(), asyncio.Event()
        count = 0

        async def keep_alive() -> None:
            nonlocal count
            count += 1
            if count == 3:
                kept.set()

        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2) as deadline:
                hold.arm(deadline, lambda: 0.2 - (time.monotonic() - t0 - hold.held_s()),
                         keep_alive, every_s=0.1)
                with hold.holding():
                    await kept.wait()  # three keep-alives: 0.3 s, past the 0.2 s deadline
                assert hold.held_s() >= 0.3 and not deadline.expired()
                await asyncio.Event().wait()  # the deadline, back, ends this
        assert count == 3  # none after the hold ended
        assert time.monotonic() - t0 >= 0.3 + 0.19

    asyncio.run(main())
