"""A native agent for the viewer's tests: it solves the demo tasks with the rule agent,
but records what it did as a trajectory of model turns and tool calls (`record_llm`,
`record_tool`), so a run has real steps for the rollout page to show."""

from __future__ import annotations

from typing import Any

from hud_ray.agents import Session
from hud_ray.agents.rule import rule_agent

LONG_RESULT_CHARS = 4000  # longer than the page's collapse threshold: shown collapsed


async def _solve(session: Session, skip: str | None) -> Any:
    prompt = session.prompt_text
    session.record_llm(model="view-test-1", prompt_tokens=len(prompt), completion_tokens=12,
                       latency_s=0.01, content=f"I will call solve on: {prompt[:60]}",
                       finish_reason="tool_calls")
    if skip and skip in prompt:
        session.record_tool("solve", {"prompt": prompt}, "refused: this agent skips it",
                            is_error=True, latency_s=0.001)
        answer = "I don't know"
    else:
        answer = await rule_agent(session)
        # One long tool result per rollout: the page must collapse it, never cut it.
        session.record_tool("solve", {"prompt": prompt, "verbose": True},
                            f"answer={answer}\n" + "x" * LONG_RESULT_CHARS + "\nEND-OF-RESULT",
                            latency_s=0.001)
    session.record_llm(model="view-test-1", prompt_tokens=len(prompt) + 40,
                       completion_tokens=5, latency_s=0.01, content=f"final: {answer}",
                       finish_reason="stop")
    return answer


async def agent_a(session: Session) -> Any:
    return await _solve(session, skip=None)


async def agent_b(session: Session) -> Any:
    """Like agent_a, but refuses arithmetic: the arithmetic tasks flip from A to B."""
    return await _solve(session, skip="Compute ")
