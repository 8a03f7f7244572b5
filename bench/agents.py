"""Agents for the benchmarks (importable on Ray workers: the bench puts the repo on
PYTHONPATH before Ray starts)."""

from __future__ import annotations

import re

from hud_ray.agents import Session

PROMPT = re.compile(r"letter '(.)' appear in '(.*)'\?")


def count_answer(prompt: str) -> str:
    """The instant agent's whole policy: parse the count prompt, answer at once."""
    match = PROMPT.search(prompt)
    return str(match.group(2).count(match.group(1))) if match else "?"


async def instant(session: Session) -> str:
    return count_answer(session.prompt_text)


def count_tasks(n: int) -> list[dict[str, object]]:
    """B5's task rows (hud's Task takes the same env/id/args)."""
    return [{"env": "benchcount", "id": "count",
             "args": {"text": "banana" * (1 + i % 3) + f"-{i}", "letter": "a"}}
            for i in range(n)]


async def half_second(session: Session) -> str:
    """B6's agent: 0.5 s of "thinking", then the rule agent's answer (demo env)."""
    import asyncio

    from hud_ray.agents.rule import rule_agent

    await asyncio.sleep(0.5)
    return await rule_agent(session)
