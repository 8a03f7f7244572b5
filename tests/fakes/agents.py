"""Agents used by tests, loaded by file path (`tests/fakes/agents.py:NAME`) in workers."""

from __future__ import annotations

import asyncio

from hud_ray.agents.rule import rule_agent


async def slow_rule_agent(session):
    """The rule agent, slowed so that rollouts are in flight when a test strikes."""
    await asyncio.sleep(0.4)
    return await rule_agent(session)


async def raising_agent(session):
    raise RuntimeError("this agent always fails")


async def blocking_agent(session):
    """Blocks its worker's event loop (a sync call in async code) on riddles: a stuck
    loop that only the driver's outside deadline can end."""
    import time

    from hud_ray.agents.rule import rule_agent

    if session.task.id == "riddle":
        time.sleep(3600)  # noqa: ASYNC251 - blocking the loop is the point
    return await rule_agent(session)


async def set_answer_agent(session):
    """Answers with a set: not JSON, so the answer itself is the agent's error."""
    return {"a", "b"}


async def sleepy_rule_agent(session):
    """The rule agent after 4 s: a rollout that lives through several reaper passes."""
    await asyncio.sleep(4)
    return await rule_agent(session)
