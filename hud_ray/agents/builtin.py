"""Trivial built-in agents: `nop` (answers nothing) and `echo` (answers the prompt)."""

from __future__ import annotations

from typing import Any

from . import Session


async def nop(session: Session) -> Any:
    """Answers with an empty string: a floor for rewards and a pure-overhead benchmark."""
    return ""


async def echo(session: Session) -> Any:
    return session.prompt_text
