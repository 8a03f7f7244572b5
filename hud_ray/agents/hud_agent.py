"""Run any hud Agent (hud 0.6.21, the `[hud]` extra) in a sandbox hud_ray provisioned.

    # a class with its config fields as keywords (any OpenAI-compatible server):
    agent = HudAgentAdapter("hud.agents.openai_compatible:OpenAIChatAgent",
                            model="my-model", base_url="http://vllm:8000/v1", api_key=KEY)
    run_distributed(tasks, agent)
    run_distributed(tasks, "hud:mypkg.agents:make_agent")   # a spec: a factory, no config
    run_distributed(tasks, "hud:hud.agents.openai_compatible:OpenAIChatAgent")  # HUD gateway
    run_distributed(tasks, HudAgentAdapter(MyAgent()))      # an instance (must pickle)

The target is `pkg.module:attr` or `path/to/file.py:attr`, where attr is an `Agent`
subclass (built with `Class.load(config)`, i.e. its config fields as keyword arguments, or
`Class()` without), a factory `attr(**config) -> Agent`, or an `Agent` instance. As a
spec string, `hud:TARGET` takes no config: put a configured agent behind a factory.

Design. hud_ray's rollout owns the task lifecycle on its own control session (start,
grade, cancel, one deadline, the failure taxonomy), so hud's `rollout()` — which would
start and grade the task a second time, on a session of its own — is not used. A hud
Agent needs only a `Run`: `await agent(run)` fills `run.trace`, and `run.trace.content`
is the answer. The adapter builds a real `hud.eval.run.Run` for the task hud_ray already
started — prompt and episode bindings from the `tasks.start` reply — around a real
`HudClient` on a second control session of the same env server (the env keeps one task
per session, so that session holds none). That client is what hud's tool agents use:
`run.client.manifest.bindings`, `run.client.open(name)` / `binding(name)`, whose tunnels
take the same `tunnel.open` route hud_ray's do. Every connection hud's client makes goes
through a loopback gateway that dials the sandbox with hud_ray's wire, so an endpoint's
`preamble` (the token gate in front of a cloud sandbox, which hud knows nothing about)
is sent first.

Outcomes: an agent that raises is an `agent_error` row. A hud agent that catches its own
failure (a ToolAgent whose model call failed) ends with `trace.status == "error"`; that is
an `agent_error` too (`HudAgentError`, message = `trace.error`) unless
`grade_errors=True`, which grades whatever answer it left, as hud's rollout does. The
agent's `config.timeout_seconds` applies when the task sets no agent timeout. The steps
the agent recorded land in the `steps` column (kind "hud", the step's JSON). Nothing is
reported to the HUD platform: no trace context is set, so hud's span export is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hud_ray.agents import AgentSpecError, Session, _import_module
from hud_ray.wire import WireError, open_stream, parse_url, splice, uses_tls

SPEC_PREFIX = "hud:"
TUNNEL_DRAIN_S = 1.0


class HudAgentError(RuntimeError):
    """A hud agent ended its trace with status "error"; the message is `trace.error`."""


def hud_agent_from_spec(spec: str) -> HudAgentAdapter:
    """`hud:pkg.module:attr` → an adapter (resolved now, so a bad spec fails early)."""
    return HudAgentAdapter(spec.removeprefix(SPEC_PREFIX), _spec=spec)


class HudAgentAdapter:
    """`async def __call__(session) -> answer` around a hud Agent (see the module doc)."""

    def __init__(self, agent: Any, *, grade_errors: bool = False, _spec: str | None = None,
                 llm_limits: dict[str, Any] | None = None, **config: Any) -> None:
        self.grade_errors = grade_errors
        self.llm_limits = llm_limits
        self.config = config
        self._spec = _spec or (agent if isinstance(agent, str) else None)
        self.target = agent if isinstance(agent, str) else None
        self._agent: Any = None if isinstance(agent, str) else agent
        if self._agent is not None and config:
            raise AgentSpecError("HudAgentAdapter: config keywords need a target string, "
                                 "not an agent instance")
        agent_obj = self.agent  # resolve on the driver: a bad target fails the run at plan time
        label = f"{SPEC_PREFIX}{self.target or _type_path(agent_obj)}"
        # `agent_name()` labels rows as `module:qualname`; make that the spec.
        self.__module__, _, self.__qualname__ = label.partition(":")

    @property
    def agent(self) -> Any:
        if self._agent is None:
            self._agent = _build_agent(self._spec or self.target or "", self.target or "",
                                       self.config, self.llm_limits)
        elif not isinstance(self._agent, _agent_base(self._spec or "HudAgentAdapter")):
            raise AgentSpecError(f"HudAgentAdapter: {self._agent!r} is not a hud Agent")
        return self._agent

    def __getstate__(self) -> dict[str, Any]:
        # Ship a target string, not the built agent (it may hold an HTTP client): each
        # worker builds its own on first use.
        state = dict(self.__dict__)
        if self.target is not None:
            state["_agent"] = None
        return state

    def __repr__(self) -> str:  # config may carry credentials: never shown
        return f"HudAgentAdapter({self.target or _type_path(self._agent)!r})"

    async def __call__(self, session: Session) -> Any:
        if session.client is None:
            raise RuntimeError("HudAgentAdapter: this session has no env connection")
        async with self._rollout_agent(session) as agent:
            return await self._run(agent, session)

    @contextlib.asynccontextmanager
    async def _rollout_agent(self, session: Session) -> Any:
        """The agent for this rollout: under an RL rollout source, one built for it whose
        model calls go through the rollout's capture proxy (hud_ray.rl.capture)."""
        from hud_ray.rl.capture import capture_proxy, policy_of

        if policy_of(session) is None:
            yield self.agent
            return
        if self.target is None:
            raise AgentSpecError(
                "HudAgentAdapter under a rollout source needs the agent as a target string "
                "with config (not an instance): each rollout's agent is built pointing at "
                "its capture proxy")
        inner = None
        if self.llm_limits:  # the endpoint governor sits under the policy's transport
            from hud_ray.agents.openai_agent import governed_http_client

            inner = governed_http_client(self.config.get("base_url"), self.config.get("model")
                                         or "policy", self.llm_limits)._transport
        async with capture_proxy(session, self.config.get("base_url"), inner) as base_url:
            config = {**self.config, "base_url": base_url}
            if "api_key" not in config and "api_key_env" not in config:
                config["api_key"] = "EMPTY"  # else hud reaches for its gateway's key
            yield _build_agent(self._spec or self.target, self.target, config)

    async def _run(self, agent: Any, session: Session) -> Any:
        from hud.clients import connect
        from hud.eval import Runtime
        from hud.eval.run import Run

        assert session.client is not None
        # EnvClient keeps the endpoint's preamble privately; the gateway must send it too.
        gateway = _Gateway(session.client.url, session.client.preamble)
        await gateway.start()
        try:
            # The env is already serving: a short readiness budget, not hud's 240 s.
            async with connect(Runtime(f"tcp://{gateway.address}"), ready_timeout=10.0) as client:
                run = Run(client, session.task.id, session.task.args)
                _open_run(run, session)
                first_agent_step = len(run.trace.steps)
                try:
                    await self._drive(agent, run, session)
                finally:
                    for step in run.trace.steps[first_agent_step:]:
                        session.record_step("hud", step=step.model_dump(mode="json",
                                                                        exclude_none=True))
                await _close_capability_clients(client)
                # Tunnels the agent closed are still passing their EOF along; hud's
                # close() would cancel them mid-way (and asyncio logs each one).
                await gateway.drain(keep=1, timeout_s=TUNNEL_DRAIN_S)
        finally:
            await gateway.close()
        trace = run.trace
        session.record_step("hud_trace", status=trace.status, stop_reason=trace.stop_reason,
                            error=trace.error)
        if trace.status == "error" and not self.grade_errors:
            raise HudAgentError(trace.error or "the hud agent ended with status 'error'")
        return trace.content

    async def _drive(self, agent: Any, run: Any, session: Session) -> None:
        # The task's agent timeout is enforced by the rollout; the agent's own config
        # timeout stands in when the task has none (hud's precedence).
        timeout = None if session.task.agent_timeout_s is not None else agent.config.timeout_seconds
        if timeout is None:
            await agent(run)
            return
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await agent(run)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise HudAgentError(
                f"hud agent exceeded its config.timeout_seconds={timeout:g}") from None


async def _close_capability_clients(client: Any) -> None:
    """Close the capability clients (MCP sessions) hud's client opened, then let their
    forwarded connections end on their own. hud's `close()` closes them too, but then
    cancels those forwarders while their HTTP connections are still winding down, and
    asyncio logs a CancelledError traceback per connection in every worker's output."""
    opened = getattr(client, "_opened", None)
    tunnels = getattr(client, "_tunnels", None)
    if not isinstance(opened, dict) or not isinstance(tunnels, set):
        return  # another hud version: its own close() does the work
    for capability_client in list(opened.values()):
        with contextlib.suppress(Exception):
            await capability_client.close()
    opened.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TUNNEL_DRAIN_S):
            while tunnels:
                await asyncio.wait(set(tunnels), return_when=asyncio.FIRST_COMPLETED)


def _open_run(run: Any, session: Session) -> None:
    """What `Run.__aenter__` does after `tasks.start`, minus the start: hud_ray did it."""
    from hud.types import Step, TaskCall

    episode = session.bindings if isinstance(session.bindings, dict) else {}
    run.prompt = session.prompt
    run.bindings = episode
    run.slug = session.task.slug
    started: dict[str, Any] = {"prompt": session.prompt}
    if episode:
        started["bindings"] = episode
    run.record(Step(source="task", task_call=TaskCall(
        phase="setup", name=session.task.id, arguments=session.task.args, result=started)))
    if run.prompt is not None:
        run.record(Step(source="user", messages=run.prompt_messages))


def _agent_base(spec: str) -> type:
    try:
        from hud.agents.base import Agent
    except ImportError as exc:
        raise AgentSpecError(
            f"agent spec {spec!r} needs hud: pip install 'hud-ray[hud]' ({exc})") from None
    return Agent


def _build_agent(spec: str, target: str, config: dict[str, Any],
                 llm_limits: dict[str, Any] | None = None) -> Any:
    from hud_ray.agents.config import resolve_api_key

    base = _agent_base(spec)
    config = resolve_api_key(config)  # api_key_env: read on the worker that builds it
    if llm_limits:
        config = _with_governed_client(spec, config, llm_limits)
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise AgentSpecError(f"agent spec {spec!r}: expected 'hud:pkg.module:Attr' or "
                             "'hud:path/file.py:Attr'")
    module = _import_module(spec, module_part)
    obj = getattr(module, attr, None)
    if obj is None:
        raise AgentSpecError(f"agent spec {spec!r}: {module_part} has no attribute {attr!r}")
    try:
        if isinstance(obj, type) and issubclass(obj, base):
            agent = obj.load(config) if config else obj()
        elif isinstance(obj, base):
            if config:
                raise AgentSpecError(f"agent spec {spec!r}: {attr} is an agent instance; "
                                     "config keywords need a class or a factory")
            agent = obj
        elif callable(obj):
            agent = obj(**config)
        else:
            raise AgentSpecError(f"agent spec {spec!r}: {attr!r} is not an Agent class, "
                                 "instance or factory")
    except AgentSpecError:
        raise
    except Exception as exc:
        raise AgentSpecError(f"agent spec {spec!r}: building the agent failed: "
                             f"{_one_line(exc)}") from None
    if not isinstance(agent, base):
        raise AgentSpecError(f"agent spec {spec!r}: {attr} returned {type(agent).__name__}, "
                             "not a hud Agent")
    return agent


def _with_governed_client(spec: str, config: dict[str, Any],
                          limits: dict[str, Any]) -> dict[str, Any]:
    """hud's OpenAI-compatible agents take a `model_client`: hand them one whose requests
    the endpoint governor admits."""
    if not config.get("model"):
        raise AgentSpecError(f"agent spec {spec!r}: --llm-limit needs the agent's model "
                             "(--agent-opt model=...) to know which endpoint it governs")
    from openai import AsyncOpenAI

    from hud_ray.agents.openai_agent import governed_http_client

    client = AsyncOpenAI(api_key=config.get("api_key") or "EMPTY",
                         base_url=config.get("base_url"),
                         http_client=governed_http_client(config.get("base_url"),
                                                          config["model"], limits))
    return {**config, "model_client": client}


def _one_line(exc: Exception) -> str:
    """A config the agent rejects, as one line naming the setting."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}"
                    for e in exc.errors()]
        return f"invalid agent config: {'; '.join(problems)}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _type_path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


class _Gateway:
    """127.0.0.1 listener: each connection becomes one to the sandbox, preamble first."""

    def __init__(self, url: str, preamble: bytes | None) -> None:
        self.host, self.port = parse_url(url)
        self.tls = uses_tls(url)
        self._preamble = preamble
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)
        try:
            try:
                remote = await open_stream(self.host, self.port, preamble=self._preamble,
                                           tls=self.tls)
            except WireError:
                writer.close()  # hud's client sees EOF: "not ready" / a failed tunnel
                return
            await splice((reader, writer), remote)
        except asyncio.CancelledError:
            # Only close() cancels these; a connection callback that ends cancelled is
            # logged by asyncio as an "Exception in callback", so end it quietly.
            writer.close()

    async def drain(self, keep: int, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until no more than `keep` connections are open."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(self._conns) > keep:
                    await asyncio.wait(set(self._conns), return_when=asyncio.FIRST_COMPLETED)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._conns, return_exceptions=True)
