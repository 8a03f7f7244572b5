"""HUD's env wire protocol for many simulated sandboxes behind ONE listening socket.

Each connection starts with the endpoint's preamble `{"sim_sandbox":"<id>"}\\n`, which picks
the virtual env; then it is a normal HUD connection (line-delimited JSON-RPC: hello,
tasks.list/start/grade/cancel, bye — or `tunnel.open` as the first frame, here for one
`echo` capability). It is an `asyncio.Protocol`, not streams: an idle sandbox is one small
object, an open connection adds one protocol object and no task, and waits (work time,
crash, drop) are loop timers. That is what lets one process hold 10,000 sandboxes.

Grading rule: score 1.0 iff the answer equals `args["answer"]` (default "").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from .options import Fate, SimOptions

FRAME_LIMIT_BYTES = 16 * 1024 * 1024
ENV_INFO = {"name": "sim", "version": "1"}
CAPABILITY = "echo"
_PREAMBLE, _FIRST, _CONTROL, _TUNNEL = range(4)
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class SimSandbox:
    """One virtual env. Holds no task and no socket while nobody is connected."""

    __slots__ = ("conns", "crashed", "created_at", "dead", "drop_pending", "fate", "id",
                 "labels", "name", "ready_at", "started_at", "task", "timer")

    def __init__(self, sandbox_id: str, name: str, labels: dict[str, str], fate: Fate,
                 created_at: float) -> None:
        self.id = sandbox_id
        self.name = name
        self.labels = labels
        self.fate = fate
        self.created_at = created_at
        self.ready_at = time.monotonic() + fate.cold_start_s
        self.drop_pending = fate.tunnel_drop
        self.crashed = False
        self.dead = False
        self.task: tuple[str, dict[str, Any]] | None = None
        self.started_at = 0.0
        self.conns: list[_Conn] | None = None
        self.timer: asyncio.TimerHandle | None = None

    @property
    def session_id(self) -> str:
        return "sess-" + self.id[-12:]

    def preamble(self) -> bytes:
        return _dumps({"sim_sandbox": self.id}).encode() + b"\n"

    def cut(self) -> None:
        """Reset every open connection (the peer sees ECONNRESET / EOF)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for conn in self.conns or ():
            with contextlib.suppress(Exception):
                conn.transport.abort()
        self.conns = None


class SimHub:
    """The listening socket and the routing table (shared with the provider)."""

    def __init__(self, boxes: dict[str, SimSandbox], options: SimOptions) -> None:
        self.boxes = boxes
        self.options = options
        self.server: asyncio.Server | None = None
        self.starting: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.bindings: list[dict[str, Any]] = []

    async def port_for_this_loop(self) -> int:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            # First use, or a previous loop (closed; its connections died with it). One task
            # starts the listener: thousands of concurrent first ready() calls share it.
            self.close()
            for box in self.boxes.values():
                box.conns, box.timer = None, None
            self.loop = loop
            self.starting = loop.create_task(self._listen(loop))
        if self.server is None:
            assert self.starting is not None
            await asyncio.shield(self.starting)
        return self.port

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            # A deep backlog: thousands of rollouts may dial at once; a dropped SYN costs 1 s.
            server = await loop.create_server(lambda: _Conn(self), self.options.host, 0,
                                              backlog=4096)
        except BaseException:
            self.loop = None  # the next ready() tries again
            raise
        if self.loop is not loop:  # closed while binding
            server.close()
            raise ConnectionAbortedError("sim provider closed while starting its listener")
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        url = f"tcp://{self.options.host}:{self.port}"
        self.bindings = [{"name": CAPABILITY, "protocol": "tcp", "url": url, "params": {}}]

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.close()
        self.server, self.loop, self.starting = None, None, None

    # --- timed sandbox events ---------------------------------------------------------
    def arm(self, box: SimSandbox) -> None:
        """At tasks.start: schedule this sandbox's crash or connection drop, if drawn."""
        fate = box.fate
        if box.timer is not None:
            box.timer.cancel()
            box.timer = None
        if fate.crash:
            box.timer = asyncio.get_running_loop().call_later(
                fate.crash_frac * fate.duration_s, self._crash, box)
        elif box.drop_pending:
            box.timer = asyncio.get_running_loop().call_later(
                fate.drop_frac * fate.duration_s, self._drop, box)

    def _crash(self, box: SimSandbox) -> None:
        box.timer = None
        box.crashed = True  # refuses new connections from now on
        box.cut()

    def _drop(self, box: SimSandbox) -> None:
        box.timer = None
        box.drop_pending = False  # once: the sandbox lives on, a reconnect resumes the task
        box.cut()


class _Conn(asyncio.Protocol):
    __slots__ = ("box", "buf", "busy_id", "busy_timer", "hub", "mode", "transport")

    def __init__(self, hub: SimHub) -> None:
        self.hub = hub
        self.box: SimSandbox | None = None
        self.mode = _PREAMBLE
        self.buf = bytearray()
        self.busy_id: Any = None
        self.busy_timer: asyncio.TimerHandle | None = _IDLE
        self.transport: Any = None

    # --- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_busy()
        box = self.box
        if box is not None and box.conns:
            with contextlib.suppress(ValueError):
                box.conns.remove(self)
            if not box.conns:
                box.conns = None

    def pause_writing(self) -> None:  # a slow tunnel reader throttles the echo
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.mode == _TUNNEL:
            self.transport.write(data)
            return
        buf = self.buf
        buf += data
        while self.mode != _TUNNEL and not self.transport.is_closing():
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > FRAME_LIMIT_BYTES:
                    self._send_error(None, -32000, f"frame exceeds {FRAME_LIMIT_BYTES} bytes")
                    self.transport.close()
                return
            line = bytes(buf[:end])
            del buf[: end + 1]
            self._line(line)
        if self.mode == _TUNNEL and buf:
            self.transport.write(bytes(buf))
            buf.clear()

    # --- frames -----------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        self.transport.write(_dumps(message).encode() + b"\n")

    def _reply(self, msg_id: Any, result: dict[str, Any]) -> None:
        self._send({"jsonrpc": "2.0", "id": msg_id, "result": result})

    def _send_error(self, msg_id: Any, code: int, message: str) -> None:
        self._send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})

    def _line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._send_error(None, -32700, "parse error: not a JSON object")
            self.transport.close()
            return
        if self.mode == _PREAMBLE:
            self._route(message)
            return
        method = message.get("method")
        msg_id = message.get("id")
        params = message.get("params") or {}
        if not isinstance(params, dict):
            self._send_error(msg_id, -32602, f"{method}: params must be an object")
            return
        if self.mode == _FIRST:
            self.mode = _CONTROL
            if method == "tunnel.open":
                self._tunnel(msg_id, params)
                return
        handler = _METHODS.get(method)  # type: ignore[arg-type]
        if handler is None:
            self._send_error(msg_id, -32601, f"method not found: {method}")
        elif self.busy_timer is not _IDLE and method in ("tasks.start", "tasks.grade"):
            self._send_error(msg_id, -32600, f"{method}: a task call is still running")
        else:
            handler(self, msg_id, params)

    def _route(self, message: dict[str, Any]) -> None:
        sandbox_id = message.get("sim_sandbox")
        if not isinstance(sandbox_id, str):
            self._send_error(None, -32600, 'sim: a connection must start with {"sim_sandbox": ID}')
            self.transport.close()
            return
        box = self.hub.boxes.get(sandbox_id)
        if (box is None or box.dead or box.crashed or box.fate.ready_fail
                or time.monotonic() < box.ready_at):
            self.transport.close()  # like a host that is gone or not serving yet: EOF
            return
        self.box = box
        self.mode = _FIRST
        if box.conns is None:
            box.conns = [self]
        else:
            box.conns.append(self)

    def _tunnel(self, msg_id: Any, params: dict[str, Any]) -> None:
        name = params.get("capability")
        if name != CAPABILITY:
            self._send_error(msg_id, -32602, f"unknown capability: {name!r}")
            self.transport.close()
            return
        self._reply(msg_id, {"capability": name})
        self.mode = _TUNNEL

    # --- control methods ----------------------------------------------------------------
    def hello(self, msg_id: Any, params: dict[str, Any]) -> None:
        box = self.box
        assert box is not None
        requested = params.get("session_id")
        if requested is not None and requested != box.session_id:
            self._send_error(msg_id, -32600, f"unknown session: {requested!r}")
            return
        self._reply(msg_id, {"session_id": box.session_id, "env": ENV_INFO,
                             "bindings": self.hub.bindings})

    def tasks_list(self, msg_id: Any, params: dict[str, Any]) -> None:
        self._reply(msg_id, {"tasks": [{
            "id": "*", "description": "sim: any template id; args.answer is the expected answer",
            "args": {"type": "object", "properties": {"answer": {"type": "string"}}},
        }]})

    def tasks_start(self, msg_id: Any, params: dict[str, Any]) -> None:
        template_id, args = params.get("id"), params.get("args") or {}
        if not isinstance(template_id, str) or not isinstance(args, dict):
            self._send_error(msg_id, -32602, "tasks.start: 'id' must be a string, 'args' an object")
            return
        box = self.box
        assert box is not None
        box.task = (template_id, args)
        box.started_at = time.monotonic()
        self.hub.arm(box)
        prompt = args.get("prompt") or f"sim task {template_id!r} with args {_dumps(args)}"
        result = {"prompt": prompt}
        if box.fate.crash and self.hub.options.work_in == "start":
            self._set_busy(msg_id, None)  # the crash comes before the reply would
        elif self.hub.options.work_in == "start" and box.fate.duration_s > 0:
            self._later(msg_id, box.fate.duration_s, result)
        else:
            self._reply(msg_id, result)

    def tasks_grade(self, msg_id: Any, params: dict[str, Any]) -> None:
        box = self.box
        assert box is not None
        if box.task is None:
            self._send_error(msg_id, -32600, "no task in progress")
            return
        fate = box.fate
        if fate.crash or fate.hang:
            self._set_busy(msg_id, None)  # never answered: the crash timer or a deadline ends it
            return
        expected = box.task[1].get("answer", "")
        box.task = None
        result: dict[str, Any] = {"score": 1.0 if params.get("answer") == expected else 0.0,
                                  "info": {"sim_duration_s": fate.duration_s}}
        if fate.env_error:
            result = {"__error__": "sim: simulated env error in tasks.grade"}
        wait = 0.0
        if self.hub.options.work_in == "grade":
            wait = box.started_at + fate.duration_s - time.monotonic()
        if wait > 0:
            self._later(msg_id, wait, result)
        else:
            self._answer(msg_id, result)

    def tasks_cancel(self, msg_id: Any, params: dict[str, Any]) -> None:
        self._interrupt("tasks.cancel")
        self._reply(msg_id, {"cancelled": True})

    def bye(self, msg_id: Any, params: dict[str, Any]) -> None:
        self._interrupt("bye")
        self._reply(msg_id, {"goodbye": True})
        self.transport.close()

    # --- pending work -------------------------------------------------------------------
    def _interrupt(self, method: str) -> None:
        if self.busy_timer is not _IDLE:
            busy_id = self.busy_id
            self._clear_busy()
            self._send_error(busy_id, -32000, f"{method} interrupted the task")
        if self.box is not None:
            self.box.task = None

    def _set_busy(self, msg_id: Any, timer: asyncio.TimerHandle | None) -> None:
        self.busy_id, self.busy_timer = msg_id, timer

    def _clear_busy(self) -> None:
        if self.busy_timer is not _IDLE and self.busy_timer is not None:
            self.busy_timer.cancel()
        self.busy_id, self.busy_timer = None, _IDLE

    def _later(self, msg_id: Any, delay_s: float, result: dict[str, Any]) -> None:
        timer = asyncio.get_running_loop().call_later(delay_s, self._finish, msg_id, result)
        self._set_busy(msg_id, timer)

    def _finish(self, msg_id: Any, result: dict[str, Any]) -> None:
        self.busy_id, self.busy_timer = None, _IDLE
        if not self.transport.is_closing():
            self._answer(msg_id, result)

    def _answer(self, msg_id: Any, result: dict[str, Any]) -> None:
        if "__error__" in result:
            self._send_error(msg_id, -32000, result["__error__"])
        else:
            self._reply(msg_id, result)


# A sentinel distinct from None: None as a busy timer means "busy, never answered" (hang).
_IDLE: Any = object()

_METHODS = {
    "hello": _Conn.hello,
    "tasks.list": _Conn.tasks_list,
    "tasks.start": _Conn.tasks_start,
    "tasks.grade": _Conn.tasks_grade,
    "tasks.cancel": _Conn.tasks_cancel,
    "bye": _Conn.bye,
}
