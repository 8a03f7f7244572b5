"""A rule-based agent for the demo env: it really parses each prompt and answers.

It solves counting, arithmetic, reversing, sorting and the kv lookup (through a
capability tunnel), and honestly cannot solve riddles — so rewards carry signal.
"""

from __future__ import annotations

import re
from typing import Any

from . import Session

_COUNT = re.compile(r"letter '(.)' appear in: '(.*)'\?")
_ARITH = re.compile(r"Compute (-?\d+) ([+\-*]) (-?\d+)\.")
_REVERSE = re.compile(r"Reverse the word '([^']*)'")
_SORT = re.compile(r"comma-separated: (.*)$")
_KV = re.compile(r"Open the '(\w+)' capability, send '(GET \S+)'")


async def rule_agent(session: Session) -> Any:
    prompt = session.prompt_text
    if m := _COUNT.search(prompt):
        letter, sentence = m.groups()
        return str(sentence.lower().count(letter.lower()))
    if m := _ARITH.search(prompt):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return str({"+": a + b, "-": a - b, "*": a * b}[op])
    if m := _REVERSE.search(prompt):
        return m.group(1)[::-1]
    if m := _SORT.search(prompt):
        numbers = sorted(int(x) for x in m.group(1).split(","))
        return ", ".join(str(n) for n in numbers)
    if m := _KV.search(prompt):
        return await _kv_get(session, m.group(1), m.group(2))
    session.record_step("give_up", reason="no rule matches this prompt")
    return "I don't know"


async def _kv_get(session: Session, capability: str, command: str) -> str:
    reader, writer = await session.open_tunnel(capability)
    try:
        writer.write(f"{command}\n".encode())
        await writer.drain()
        value = (await reader.readline()).decode().strip()
        session.record_step("tunnel", capability=capability, sent=command, got=value)
        return value
    finally:
        writer.close()


def make_rule_agent(skip: list[str] | tuple[str, ...] = (), delay_s: float = 0.0):
    """A configurable rule agent (for sweeps): it gives up on the templates in `skip` and
    thinks for `delay_s` seconds first."""
    import asyncio

    skipped = set(skip)

    async def agent(session: Session) -> Any:
        if delay_s:
            await asyncio.sleep(delay_s)
        if session.task.id in skipped:
            session.record_step("give_up", reason=f"configured to skip {session.task.id}")
            return "skipped"
        return await rule_agent(session)

    return agent
