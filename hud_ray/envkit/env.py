"""Declaring an env for envkit (stdlib only: it must run inside any sandbox image).

    from hud_ray.envkit import Environment
    env = Environment("demo")

    @env.template("count", description="count a letter")
    async def count(sentence: str, letter: str):
        answer = yield f"How many times does {letter!r} appear in {sentence!r}?"
        yield float(str(answer).strip() == str(sentence.count(letter)))

    @env.capability("kv")          # a TCP service reachable through `tunnel.open`
    async def kv(reader, writer): ...

The shape is hud's (`@env.template`, async generator: yield the prompt, receive the
answer, yield the score), so a template body moves between hud and envkit unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import typing
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class Template:
    id: str
    func: Callable[..., AsyncGenerator[Any, Any]]
    description: str = ""

    @property
    def signature(self) -> inspect.Signature:
        # eval_str: env files often use `from __future__ import annotations`.
        try:
            return inspect.signature(self.func, eval_str=True)
        except Exception:
            return inspect.signature(self.func)

    def coerce_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """Arguments converted to the annotated types, as hud's server does with pydantic
        (lax mode): `"7"` for an `int`, a JSON string for a `list`. A value that does not
        convert is passed unchanged, for the template to judge."""
        params = self.signature.parameters
        return {
            name: _coerce(params[name].annotation if name in params else None, value)
            for name, value in args.items()
        }

    def manifest(self) -> dict[str, Any]:
        props = {
            name: {"type": _json_type(p.annotation)}
            for name, p in self.signature.parameters.items()
        }
        required = [
            name for name, p in self.signature.parameters.items() if p.default is p.empty
        ]
        return {
            "id": self.id,
            "description": self.description,
            "args": {"type": "object", "properties": props, "required": required},
        }


@dataclass
class Capability:
    """A service inside the env, reached by `tunnel.open` (hud's binding manifest shape)."""

    name: str
    protocol: str = "tcp"
    url: str | None = None
    handler: StreamHandler | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "protocol": self.protocol, "url": self.url, "params": self.params}


@dataclass
class Environment:
    name: str
    version: str = "0.1.0"
    templates: dict[str, Template] = field(default_factory=dict)
    capabilities: dict[str, Capability] = field(default_factory=dict)
    _on_start: list[Hook] = field(default_factory=list)
    _on_stop: list[Hook] = field(default_factory=list)

    def template(
        self, id: str | None = None, *, description: str = ""
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(func):
                raise TypeError(f"template {func.__name__!r} must be an async generator")
            template_id = id or func.__name__
            self.templates[template_id] = Template(template_id, func, description)
            return func

        return register

    def capability(
        self, name: str, *, protocol: str = "tcp", url: str | None = None
    ) -> Callable[[StreamHandler], StreamHandler]:
        """Serve `handler` on 127.0.0.1 inside the env and expose it as capability `name`."""

        def register(handler: StreamHandler) -> StreamHandler:
            self.capabilities[name] = Capability(name, protocol, url, handler)
            return handler

        return register

    def add_capability(self, name: str, url: str, *, protocol: str = "tcp") -> None:
        """Expose an existing service (`tcp://host:port`) inside the sandbox."""
        self.capabilities[name] = Capability(name, protocol, url)

    def on_start(self, hook: Hook) -> Hook:
        self._on_start.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        """Run `hook` when the server stops (hooks run in reverse order, as in hud)."""
        self._on_stop.append(hook)
        return hook

    # hud's names for the same hooks, so an env file's hook code moves over unchanged.
    initialize = on_start
    shutdown = on_stop


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _coerce(annotation: Any, value: Any) -> Any:
    target = typing.get_origin(annotation) or annotation
    if isinstance(target, str):
        target = {"int": int, "float": float, "bool": bool, "list": list, "dict": dict}.get(
            target.split("[")[0], None)
    with contextlib.suppress(ValueError, TypeError, OverflowError):
        if target is bool:
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            if type(value) is int and value in (0, 1):
                return bool(value)
        elif target is int and not isinstance(value, bool):
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif target is float and not isinstance(value, bool):
            if isinstance(value, int | str):
                return float(value)
        elif target in (list, dict, tuple) and isinstance(value, str):
            parsed = json.loads(value)
            if isinstance(parsed, list if target in (list, tuple) else dict):
                return tuple(parsed) if target is tuple else parsed
    return value


def _json_type(annotation: Any) -> str:
    mapping = {str: "string", int: "integer", float: "number", bool: "boolean",
               list: "array", dict: "object"}
    if isinstance(annotation, str):
        annotation = {"str": str, "int": int, "float": float, "bool": bool,
                      "list": list, "dict": dict}.get(annotation, annotation)
    return mapping.get(annotation, "string") if isinstance(annotation, type) else "string"
