"""Agents: `async def agent(session) -> answer`.

An agent gets a `Session` (prompt, task, bindings, `open_tunnel(name)`, a step recorder)
and returns the answer that `tasks.grade` receives. Agents are passed as objects or as
specs resolved on the worker: `pkg.mod:attr`, `path/to/file.py:attr`, a built-in name
(`rule`, `nop`, `echo`), or `hud:pkg.mod:AgentClass` for a hud Agent (see `hud_agent`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from hud_ray.tasks import Task
    from hud_ray.wire import EnvClient

Agent = Callable[["Session"], Awaitable[Any]]

BUILTIN_AGENTS = {
    "rule": "hud_ray.agents.rule:rule_agent",
    "nop": "hud_ray.agents.builtin:nop",
    "echo": "hud_ray.agents.builtin:echo",
}


class AgentSpecError(ValueError):
    """An agent spec that cannot be resolved; the message names the spec."""


@dataclass
class Session:
    """What an agent sees of its rollout."""

    prompt: Any
    task: Task
    rollout_key: str
    bindings: list[dict[str, Any]] = field(default_factory=list)
    client: EnvClient | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    _mcp_sessions: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _resources: contextlib.AsyncExitStack | None = field(default=None, init=False, repr=False)

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (message prompts are joined by their content)."""
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt, list):
            parts = []
            for message in self.prompt:
                content = message.get("content") if isinstance(message, dict) else message
                parts.append(content if isinstance(content, str) else str(content))
            return "\n".join(parts)
        return str(self.prompt)

    async def open_tunnel(
        self, capability: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw stream to a capability inside the sandbox (SSH, MCP, VNC, a DB …)."""
        if self.client is None:
            raise RuntimeError("this session has no env connection")
        return await self.client.open_tunnel(capability)

    async def mcp(self, name: str | None = None) -> Any:
        """A connected `mcp.ClientSession` on the env's MCP capability `name` (its only
        one when None), reached through the sandbox's tunnel, so it works on every
        provider; opened once per name, closed when the agent phase ends:

            tools = await session.mcp("tools")
            result = await tools.call_tool("add", {"a": 2, "b": 3})
        """
        from hud_ray.agents.mcp import find_binding, open_mcp_session

        if self.client is None:
            raise RuntimeError("this session has no env connection")
        binding = find_binding(self.client.bindings, name)
        key = str(binding["name"])
        if key not in self._mcp_sessions:
            if self._resources is None:
                self._resources = contextlib.AsyncExitStack()
            self._mcp_sessions[key] = await open_mcp_session(self.client, binding,
                                                             self._resources)
        return self._mcp_sessions[key]

    async def aclose(self) -> None:
        """Close what the agent opened through the session (MCP sessions, forwarders)."""
        resources, self._resources = self._resources, None
        self._mcp_sessions.clear()
        if resources is not None:
            with contextlib.suppress(Exception):
                await resources.aclose()

    def record_step(self, kind: str, **data: Any) -> None:
        """Append a step to the trace (the `steps` column and `runs/<id>/steps/`)."""
        self.steps.append({"kind": kind, "t": time.time(), **data})

    def record_llm(self, *, model: str | None = None, prompt_tokens: int | None = None,
                   completion_tokens: int | None = None, latency_s: float | None = None,
                   content: str | None = None, finish_reason: str | None = None,
                   **data: Any) -> None:
        """One model call: it fills the rollout's `n_turns`, token, `llm_s` and
        `cost_usd` columns. Also typed when given: `cached_tokens`, `cost_usd` (else the
        price table's), `prompt_token_ids`, `completion_token_ids`, `logprobs`, `error`."""
        self.record_step("llm", model=model, prompt_tokens=prompt_tokens,
                         completion_tokens=completion_tokens, latency_s=latency_s,
                         content=content, finish_reason=finish_reason, **data)

    def record_tool(self, name: str, args: Any = None, result: Any = None, *,
                    is_error: bool = False, latency_s: float | None = None,
                    **data: Any) -> None:
        """One tool call: it counts in `n_tool_calls` (and `n_tool_errors`)."""
        self.record_step("tool", name=name, args=args, result=result, is_error=is_error,
                         latency_s=latency_s, **data)


class ConfiguredAgent:
    """An agent built from a factory spec and parameters, on whichever worker runs it
    (sweeps: `agents: [{name, spec, params}]`). Picklable: it ships the spec, not the
    object."""

    def __init__(self, spec: str, params: dict[str, Any] | None = None,
                 label: str | None = None) -> None:
        self.spec = spec
        self.params = dict(params or {})
        self.agent_label = label or spec
        self._agent: Agent | None = None

    def build(self) -> Agent:
        if self._agent is None:
            if self.spec.startswith(("hud:", "openai:")):  # configured, not called
                from hud_ray.agents.config import configure_agent

                self._agent = resolve_agent(configure_agent(self.spec, self.params)
                                            if self.params else self.spec)
                return self._agent
            target = resolve_agent(self.spec)
            self._agent = target(**self.params) if self.params else target
            if not callable(self._agent):
                raise AgentSpecError(f"agent {self.agent_label!r}: {self.spec} with params "
                                     f"{sorted(self.params)} did not return a callable agent")
        return self._agent

    async def __call__(self, session: Session) -> Any:
        return await self.build()(session)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "params": self.params, "agent_label": self.agent_label,
                "_agent": None}


def agent_name(agent: Any) -> str:
    if isinstance(agent, str):
        return agent
    label = getattr(agent, "agent_label", None)
    if isinstance(label, str):
        return label
    name = getattr(agent, "__qualname__", None) or type(agent).__qualname__
    return f"{getattr(agent, '__module__', '?')}:{name}"


def resolve_agent(spec: str | Agent) -> Agent:
    """An agent object from a spec (objects pass through)."""
    if not isinstance(spec, str):
        if not callable(spec):
            raise AgentSpecError(f"agent {spec!r} is not callable")
        return spec
    if spec.startswith("openai:"):  # the built-in OpenAI-compatible tool-calling agent
        from hud_ray.agents.openai_agent import OpenAIAgent

        return OpenAIAgent(spec.removeprefix("openai:"))
    if spec.startswith("hud:"):  # a hud Agent, run through the adapter (the [hud] extra)
        from hud_ray.agents.hud_agent import hud_agent_from_spec

        return hud_agent_from_spec(spec)
    target = BUILTIN_AGENTS.get(spec, spec)
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise AgentSpecError(
            f"agent spec {spec!r}: expected 'pkg.module:attr', 'file.py:attr' or one of "
            f"{sorted(BUILTIN_AGENTS)}"
        )
    module = _import_module(spec, module_part)
    try:
        agent = getattr(module, attr)
    except AttributeError:
        raise AgentSpecError(f"agent spec {spec!r}: {module_part} has no attribute {attr!r}") from None
    if not callable(agent):
        raise AgentSpecError(f"agent spec {spec!r}: {attr!r} is not callable")
    return agent


def _import_module(spec: str, module_part: str) -> Any:
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise AgentSpecError(f"agent spec {spec!r}: file {module_part} not found")
        name = f"_hud_ray_agent_{path.stem}_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        assert loader_spec is not None and loader_spec.loader is not None
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            # Never leave a half-imported module cached: the next resolve would report a
            # missing attribute instead of this error.
            del sys.modules[name]
            raise AgentSpecError(f"agent spec {spec!r}: {_where(exc, path)}") from exc
        return module
    try:
        return importlib.import_module(module_part)
    except ImportError as exc:
        raise AgentSpecError(f"agent spec {spec!r}: cannot import {module_part}: {exc}") from None
    except Exception as exc:
        raise AgentSpecError(
            f"agent spec {spec!r}: importing {module_part} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _where(exc: Exception, path: Path) -> str:
    """`file:line: Type: message` for an exception raised while importing `path`."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
             if f.filename == str(path.resolve()) or f.filename == str(path)]
    where = f"{path}:{lines[-1]}" if lines else str(path)
    return f"{where}: {type(exc).__name__}: {exc}"
