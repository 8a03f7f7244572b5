"""`--agent openai:MODEL`: a tool-calling agent for any OpenAI-compatible endpoint (OpenAI,
vLLM, SGLang, LiteLLM, ...), with no hud needed.

    hud-ray run tasks.jsonl --agent openai:gpt-4o-mini \\
        --agent-opt base_url=http://vllm:8000/v1 --agent-opt api_key_env=VLLM_KEY \\
        --agent-opt temperature=0.7 --agent-opt max_turns=20

It offers the model every tool of the env's MCP capabilities (`session.mcp`, so it works
on every provider), runs the calls the model makes, and answers with the model's last
message. Each model call and tool call is recorded (`session.record_llm` /
`record_tool`), so the rollout's token, turn, tool-error, latency and cost columns and
its `steps/` rows are filled. Token ids and logprobs are kept when the endpoint returns
them (vLLM: `return_token_ids=true`, `logprobs=true`).

Settings (`--agent-opt` / `agent_config`): `base_url`, `api_key_env` (the variable holding
the key; default `OPENAI_API_KEY` when set), `temperature`, `top_p`, `max_tokens`,
`max_turns` (10), `system_prompt`, `max_retries` (2, the client's own back-off),
`timeout_s` (per call, 120), `return_token_ids`, `logprobs`, `extra_body` (passed as is).

Failures: an endpoint that refuses or errors is an `agent_error` naming the endpoint (the
scheduler never retries agent errors, so a dead endpoint is no retry storm); a tool call
whose arguments are not JSON, or names no tool, is answered to the model as an error and
recorded as a tool error — the rollout goes on.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from hud_ray.agents import AgentSpecError, Session

SPEC_PREFIX = "openai:"
SETTINGS = ("base_url", "api_key_env", "temperature", "top_p", "max_tokens", "max_turns",
            "system_prompt", "max_retries", "timeout_s", "return_token_ids", "logprobs",
            "extra_body", "llm_limits", "policy")


SAMPLING_KWARGS = ("temperature", "top_p", "max_tokens", "seed", "stop", "presence_penalty",
                   "frequency_penalty")


class ModelEndpointError(RuntimeError):
    """The model endpoint failed a call (after the client's own retries)."""


class OpenAIAgent:
    """`async def __call__(session) -> answer` (see the module doc)."""

    def __init__(self, model: str, **settings: Any) -> None:
        if not model:
            raise AgentSpecError("agent spec 'openai:MODEL': the model name is missing")
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise AgentSpecError(f"agent 'openai:{model}': unknown setting(s) "
                                 f"{', '.join(unknown)}; known: {', '.join(SETTINGS)}")
        self.model = model
        self.settings = settings
        self.max_turns = int(settings.get("max_turns", 10))
        if self.max_turns < 1:
            raise AgentSpecError(f"agent 'openai:{model}': max_turns must be >= 1")
        self.agent_label = f"{SPEC_PREFIX}{model}"
        self.llm_limits = settings.get("llm_limits")  # the endpoint governor's limits
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}  # each worker builds its own client

    def __repr__(self) -> str:
        return f"OpenAIAgent({self.model!r})"

    @property
    def endpoint(self) -> str:
        return str(self.settings.get("base_url") or "https://api.openai.com/v1")

    def _openai(self) -> Any:
        if self._client is None:
            try:
                from openai import AsyncOpenAI
            except ImportError as exc:
                raise AgentSpecError(f"agent 'openai:{self.model}' needs the openai package "
                                     f"({exc}): pip install 'hud-ray[openai]'") from None
            from hud_ray.agents.config import check_api_key_env

            name = check_api_key_env(self.settings)
            key = os.environ[name] if name else os.environ.get("OPENAI_API_KEY") or "EMPTY"
            http_client = governed_http_client(self.settings.get("base_url"), self.model,
                                               self.llm_limits)
            if self.settings.get("policy"):  # under an RL rollout source (hud_ray.rl.policy)
                http_client = policy_http_client_for(self.settings["policy"], http_client)
            self._client = AsyncOpenAI(
                api_key=key, base_url=self.settings.get("base_url"),
                max_retries=int(self.settings.get("max_retries", 2)),
                timeout=float(self.settings.get("timeout_s", 120.0)),
                http_client=http_client)
        return self._client

    async def __call__(self, session: Session) -> Any:
        tools, routes = await _mcp_tools(session)
        messages = _messages(session.prompt, self.settings.get("system_prompt"))
        content = None
        for _ in range(self.max_turns):
            message = await self._complete(session, messages, tools)
            content = message.get("content")
            calls = message.get("tool_calls") or []
            messages.append(message)
            if not calls:
                return content
            for call in calls:
                messages.append(await _run_tool(session, call, routes))
        session.record_step("max_turns", max_turns=self.max_turns)
        return content

    async def _complete(self, session: Session, messages: list[dict[str, Any]],
                        tools: list[dict[str, Any]]) -> dict[str, Any]:
        import openai

        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            kwargs["tools"] = tools
        for key in ("temperature", "top_p", "max_tokens"):
            if self.settings.get(key) is not None:
                kwargs[key] = self.settings[key]
        if self.settings.get("logprobs"):
            kwargs["logprobs"] = True
        extra_body = dict(self.settings.get("extra_body") or {})
        # An RL group's sampling parameters (hud_ray.rl), over the agent's own settings.
        sampling = ((session.task.columns or {}).get("rl") or {}).get("sampling") or {}
        for key, value in sampling.items():
            if key in SAMPLING_KWARGS:
                kwargs[key] = value
            else:
                extra_body[key] = value  # vLLM's own (top_k, min_p, ...)
        if self.settings.get("return_token_ids"):
            extra_body["return_token_ids"] = True
        if extra_body:
            kwargs["extra_body"] = extra_body
        t0 = time.monotonic()
        try:
            response = await self._openai().chat.completions.create(**kwargs)
        except openai.APIError as exc:
            latency = time.monotonic() - t0
            detail = " ".join(str(exc).split())
            session.record_llm(model=self.model, latency_s=latency, error=detail)
            raise ModelEndpointError(f"model endpoint {self.endpoint} ({self.model}): "
                                     f"{type(exc).__name__}: {detail}") from None
        latency = time.monotonic() - t0
        choice = response.choices[0]
        usage = response.usage
        message = choice.message.model_dump(exclude_none=True)
        message.setdefault("content", None)
        session.record_llm(
            model=response.model or self.model, latency_s=latency,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            content=choice.message.content, finish_reason=choice.finish_reason,
            policy_version=(getattr(response, "model_extra", None) or {}).get(
                "hud_ray_policy_version"),
            tool_calls=[{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                        for c in message.get("tool_calls") or []] or None,
            **_token_data(response, choice))
        return {k: v for k, v in message.items() if k in ("role", "content", "tool_calls")}


def governed_http_client(base_url: str | None, model: str,
                         limits: dict[str, Any] | None) -> Any:
    """An httpx client whose requests the endpoint's governor admits (None: no limits)."""
    if not limits:
        return None
    import httpx

    from hud_ray.llm_governor import endpoint_key, governed_transport

    return httpx.AsyncClient(transport=governed_transport(endpoint_key(base_url, model), limits),
                             timeout=None)


def policy_http_client_for(name: str, governed: Any) -> Any:
    """Model calls under the RL policy `name`, through the endpoint governor if any."""
    import httpx

    from hud_ray.rl.policy import policy_transport

    inner = governed._transport if governed is not None else None
    return httpx.AsyncClient(transport=policy_transport(name, inner), timeout=None)


def _token_data(response: Any, choice: Any) -> dict[str, Any]:
    """Token ids and logprobs, where the endpoint returned them (vLLM's extra fields)."""
    data: dict[str, Any] = {}
    prompt_ids = (getattr(response, "model_extra", None) or {}).get("prompt_token_ids")
    if prompt_ids is None:
        prompt_ids = (getattr(choice, "model_extra", None) or {}).get("prompt_token_ids")
    completion_ids = (getattr(choice, "model_extra", None) or {}).get("token_ids")
    if prompt_ids is not None:
        data["prompt_token_ids"] = list(prompt_ids)
    if completion_ids is not None:
        data["completion_token_ids"] = list(completion_ids)
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is not None and getattr(logprobs, "content", None):
        data["logprobs"] = [float(t.logprob) for t in logprobs.content]
    return data


def _messages(prompt: Any, system_prompt: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if isinstance(prompt, list):
        for item in prompt:
            if isinstance(item, dict):
                role = item.get("role") if item.get("role") in ("system", "user",
                                                                 "assistant") else "user"
                content = item.get("content")
                messages.append({"role": role, "content": content if isinstance(content, str)
                                 else json.dumps(content, default=str)})
            else:
                messages.append({"role": "user", "content": str(item)})
    else:
        messages.append({"role": "user", "content": "" if prompt is None else str(prompt)})
    return messages


async def _mcp_tools(session: Session) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """OpenAI tool params for every tool of every MCP capability, and name → route."""
    from hud_ray.agents.mcp import MCP_PROTOCOL

    if session.client is None:
        return [], {}
    names = [str(b["name"]) for b in session.client.bindings
             if str(b.get("protocol", "")).split("/", 1)[0] == MCP_PROTOCOL]
    tools: list[dict[str, Any]] = []
    routes: dict[str, tuple[Any, str]] = {}
    for capability in names:
        client = await session.mcp(capability)
        for tool in (await client.list_tools()).tools:
            name = tool.name if len(names) == 1 else f"{capability}_{tool.name}"
            routes[name] = (client, tool.name)
            tools.append({"type": "function", "function": {
                "name": name, "description": tool.description or "",
                "parameters": tool.inputSchema or {"type": "object", "properties": {}}}})
    return tools, routes


async def _run_tool(session: Session, call: dict[str, Any],
                    routes: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Run one tool call; the tool message for the model (errors included)."""
    name = call.get("function", {}).get("name", "")
    raw_args = call.get("function", {}).get("arguments") or "{}"
    call_id = call.get("id")
    t0 = time.monotonic()
    try:
        args = json.loads(raw_args)
        if not isinstance(args, dict):
            raise ValueError(f"expected a JSON object, got {type(args).__name__}")
    except ValueError as exc:
        text = f"error: the arguments are not valid JSON ({exc}): {raw_args[:200]}"
        session.record_tool(name, raw_args, text, is_error=True, call_id=call_id,
                            latency_s=time.monotonic() - t0)
        return {"role": "tool", "tool_call_id": call_id, "content": text}
    if name not in routes:
        text = f"error: no tool named {name!r} (tools: {', '.join(sorted(routes)) or 'none'})"
        session.record_tool(name, args, text, is_error=True, call_id=call_id,
                            latency_s=time.monotonic() - t0)
        return {"role": "tool", "tool_call_id": call_id, "content": text}
    client, tool_name = routes[name]
    try:
        result = await client.call_tool(tool_name, args)
        text = "\n".join(getattr(block, "text", "") for block in result.content
                         if getattr(block, "type", "") == "text")
        is_error = bool(result.isError)
    except Exception as exc:  # the tool server failed this call: the model hears so
        text, is_error = f"error: {type(exc).__name__}: {exc}", True
    session.record_tool(name, args, text, is_error=is_error, call_id=call_id,
                        latency_s=time.monotonic() - t0)
    return {"role": "tool", "tool_call_id": call_id, "content": text}
