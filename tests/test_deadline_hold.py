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


def test_the_sandbox_lifetime_budgets_for_pauses_and_a_negative_budget_is_refused(tmp_path):
    from hud_ray.rl import RolloutSource
    from hud_ray.rollout import RolloutConfig, sandbox_spec
    from hud_ray.tasks import Rollout, Task

    rollout = Rollout(task=Task(env="sim", id="t", slug="s"))
    spec = sandbox_spec(rollout, RolloutConfig(pause_budget_s=600.0, teardown_timeout_s=60.0),
                        300.0)
    assert spec.lifetime_s == 300.0 + 600.0 + 60.0
    with pytest.raises(ValueError, match="max_pause_s must be a number of seconds >= 0, got -1"):
        RolloutSource("nop", provider="sim", out=tmp_path, max_pause_s=-1)
