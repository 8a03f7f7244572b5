"""Agents for the RL rollout source's tests, loaded by path in workers
(`tests/fakes/rl_agents.py:NAME`). Each reads what it does from the task's args, so one
agent serves every group shape a test needs."""

from __future__ import annotations

import asyncio
import random


def _facts(session):
    return (session.task.columns or {}).get("rl") or {}


async def coin_agent(session):
    """Right (reward 1) or wrong (0) at random, after a long-tailed think time:
    `args.think_s` is the median; one member in ten takes 10x longer."""
    think = float(session.task.args.get("think_s", 0.0))
    if think:
        tail = 10.0 if random.random() < 0.1 else 1.0
        await asyncio.sleep(random.expovariate(1.0 / think) * tail)
    return session.task.args.get("answer", "") if random.random() < 0.5 else "wrong"


async def failing_member_agent(session):
    """Member `args.fail_index` raises (an agent_error); the others answer right."""
    if _facts(session).get("index") == session.task.args.get("fail_index"):
        raise RuntimeError("this member's policy failed")
    await asyncio.sleep(float(session.task.args.get("think_s", 0.0)))
    return session.task.args.get("answer", "")
