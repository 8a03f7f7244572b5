"""The scripted model's policy for the hud test envs: what a competent model would do,
deterministically, so hud's own `Taskset.run` and `hud-ray run` can be compared call for
call. Each branch keys on the task's prompt and on the tool results so far."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.fakes.openai_server import answer, call, text_of, tool_named


def tool_results(messages: list[dict[str, Any]]) -> list[str]:
    return [text_of(m) for m in messages if m.get("role") == "tool"]


def policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = next((text_of(m) for m in messages if m.get("role") == "user"), "")
    results = tool_results(messages)
    if m := re.search(r"add tool to compute (-?\d+) \+ (-?\d+)\.", prompt):
        if m[1] == "13" and not results:  # a model that emits broken JSON once
            return call(tool_named(tools, "add"), '{"a": 13, "b": ')
        if m[1] == "13" and len(results) == 1:
            return call(tool_named(tools, "add"), {"a": 13, "b": int(m[2])})
        if not results:
            return call(tool_named(tools, "add"), {"a": int(m[1]), "b": int(m[2])})
        return answer(results[-1].strip())
    if m := re.search(r"add tool twice to compute (-?\d+) \+ (-?\d+) \+ (-?\d+)\.", prompt):
        if not results:
            return call(tool_named(tools, "add"), {"a": int(m[1]), "b": int(m[2])})
        if len(results) == 1:
            return call(tool_named(tools, "add"), {"a": int(results[0]), "b": int(m[3])})
        return answer(results[-1].strip())
    if m := re.search(r"lookup tool to find the value of key (\w+)\.", prompt):
        if not results:
            return call(tool_named(tools, "lookup"), {"key": m[1]})
        return answer(json.dumps({"value": results[-1].strip()}))
    if m := re.search(r"write the text (\w+) into the file (\S+) in the workspace", prompt):
        if not results:
            return call(tool_named(tools, "bash"),
                        {"command": f"printf %s {m[1]} > {m[2]} && cat {m[2]}"})
        return answer(shell_output(results[-1]))
    return answer("I don't know")


def shell_output(result: str) -> str:
    """What a command printed, from hud's bash tool result (`$ cmd`, output, `(exit N)`)."""
    lines = result.strip().splitlines()
    if lines and lines[0].startswith("$ "):
        lines = lines[1:]
    if lines and lines[-1].startswith("(exit"):
        lines = lines[:-1]
    return "\n".join(lines).strip()
