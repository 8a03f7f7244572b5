"""Agent configuration from the CLI (`--agent-config FILE`, `--agent-opt KEY=VALUE`) and
the API (`run_distributed(..., agent_config={...})`).

For a `hud:` spec the configuration is the hud agent's own config (`model`, `base_url`,
`max_steps`, `system_prompt`, `completion_kwargs`, …, as `Agent.load(config)` takes it)
plus two keys of the adapter: `grade_errors` and `api_key_env`. For any other spec it is
the keyword arguments of the factory the spec names.

A key is never given by value on the command line or in a file that gets shared:
`api_key_env: OPENAI_API_KEY` names the environment variable that holds it. The driver
checks the variable is set before any sandbox starts, forwards it to the Ray workers with
the other credentials, and each worker reads it when it builds its agent; the manifest
records the variable's name, never its value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hud_ray.agents import AgentSpecError, ConfiguredAgent

API_KEY_ENV = "api_key_env"
ADAPTER_KEYS = ("grade_errors", "llm_limits")


def load_agent_config(path: str | None, pairs: list[str]) -> dict[str, Any]:
    """`--agent-config FILE` (YAML or JSON mapping), then `--agent-opt KEY=VALUE` on top.
    A value is JSON when it parses as JSON (`5`, `true`, `{"a": 1}`), else a string."""
    config: dict[str, Any] = {}
    if path:
        config.update(_read_config_file(path))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--agent-opt {pair!r}: expected KEY=VALUE")
        try:
            config[key.strip()] = json.loads(value)
        except ValueError:
            config[key.strip()] = value
    return config


def _read_config_file(path: str) -> dict[str, Any]:
    import yaml

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--agent-config {path}: file not found") from None
    except OSError as exc:
        raise ValueError(f"--agent-config {path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text) if file.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "YAML" if file.suffix in (".yaml", ".yml") else "JSON"
        raise ValueError(f"--agent-config {path}: malformed {kind}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--agent-config {path}: expected a mapping of settings, "
                         f"got {type(data).__name__}")
    return data


def check_api_key_env(config: dict[str, Any]) -> str | None:
    """The variable `api_key_env` names, checked to be set (one clear error if not)."""
    name = config.get(API_KEY_ENV)
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        raise AgentSpecError(f"agent config {API_KEY_ENV}: expected the name of an "
                             f"environment variable, got {name!r}")
    if not os.environ.get(name):
        raise AgentSpecError(f"agent config {API_KEY_ENV}={name}: environment variable "
                             f"{name} is not set (export it before the run)")
    return name


def resolve_api_key(config: dict[str, Any]) -> dict[str, Any]:
    """`api_key_env` replaced by `api_key` read from the environment (on the worker)."""
    if API_KEY_ENV not in config:
        return config
    name = check_api_key_env(config)
    resolved = {k: v for k, v in config.items() if k != API_KEY_ENV}
    resolved["api_key"] = os.environ[name] if name else None
    return resolved


def configure_agent(agent: Any, config: dict[str, Any] | None,
                    llm_limits: dict[str, Any] | None = None) -> Any:
    """The agent a spec plus a configuration make (the spec itself without one).
    `llm_limits` put the agent's model endpoint under the cluster-wide LLM governor."""
    if llm_limits:
        if not (isinstance(agent, str) and agent.startswith(("openai:", "hud:"))):
            raise AgentSpecError(
                "--llm-limit governs the model endpoint of the built-in openai:MODEL agent "
                "and of hud's OpenAI-compatible agents (hud:...); a native agent calls its "
                f"model itself ({agent_name_of(agent)})")
        config = {**(config or {}), "llm_limits": llm_limits}
    if not config:
        return agent
    if not isinstance(agent, str):
        raise AgentSpecError("agent_config applies to an agent given as a spec string "
                             f"(e.g. 'hud:pkg.mod:Agent'), not to {type(agent).__name__}")
    check_api_key_env(config)
    if agent.startswith("openai:"):
        from hud_ray.agents.openai_agent import OpenAIAgent

        return OpenAIAgent(agent.removeprefix("openai:"), **config)
    if agent.startswith("hud:"):
        from hud_ray.agents.hud_agent import HudAgentAdapter

        adapter_kwargs: dict[str, Any] = {k: config[k] for k in ADAPTER_KEYS if k in config}
        agent_config = {k: v for k, v in config.items() if k not in ADAPTER_KEYS}
        return HudAgentAdapter(agent.removeprefix("hud:"), _spec=agent, **adapter_kwargs,
                               **agent_config)
    return ConfiguredAgent(agent, config, label=agent)


def agent_name_of(agent: Any) -> str:
    from hud_ray.agents import agent_name

    return agent_name(agent)


def redacted_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """For the manifest: secrets masked at any depth; `api_key_env` names a variable, so
    its value (the name, not the key) is kept."""
    from hud_ray.redact import redacted

    config = config or {}
    masked = redacted({k: v for k, v in config.items() if k != API_KEY_ENV})
    if API_KEY_ENV in config:
        masked[API_KEY_ENV] = config[API_KEY_ENV]
    return masked
