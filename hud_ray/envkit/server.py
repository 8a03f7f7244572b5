"""The envkit server: HUD's env wire protocol in the standard library.

Semantics follow hud 0.6.21's server (`hud.environment.server`): the first frame on a
connection routes it (`tunnel.open` → raw splice to a capability, else a control
session); start/grade run beside the read loop so `tasks.cancel` and `bye` still reach
them; a dropped connection parks its task for a later `hello {session_id}` to resume.
tests/fakes/transcript.py holds one conversation that both servers must answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any
from urllib.parse import urlsplit

from .env import Environment
from .frames import FRAME_LIMIT_BYTES, FrameTooLarge, encode, error, read_frame, reply
from .runner import Runner, _jsonable

__all__ = ["FRAME_LIMIT_BYTES", "FrameTooLarge", "bind", "serve", "shutdown"]


class NoTaskInProgress(RuntimeError):
    pass


class Channel:
    """Server-wide state: runners by session id, live sessions, capability addresses."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.runners: dict[str, Runner] = {}
        self.live: set[str] = set()
        self.capability_urls: dict[str, str] = {}

    async def cancel(self, session_id: str) -> None:
        runner = self.runners.pop(session_id, None)
        if runner is not None:
            await runner.cancel()

    def bindings(self) -> list[dict[str, Any]]:
        out = []
        for cap in self.env.capabilities.values():
            manifest = cap.manifest()
            manifest["url"] = self.capability_urls.get(cap.name, cap.url)
            out.append(manifest)
        return out


class Session:
    """One control connection."""

    def __init__(self, channel: Channel, writer: asyncio.StreamWriter) -> None:
        self.channel = channel
        self.writer = writer
        self.id = "sess-" + secrets.token_hex(4)
        channel.live.add(self.id)
        self.work: asyncio.Task[None] | None = None
        self.work_id: Any = None
        self.work_method = ""

    async def send(self, message: dict[str, Any]) -> bool:
        """Write one reply; False if it had to be replaced by an error (too big, NaN).

        A request without an id is a notification: like hud's server, never answer it
        (a client would take an unsolicited id-null frame for a fatal error)."""
        if message.get("id") is None:
            return True
        sent_as_is = True
        try:
            frame = encode(message)
        except FrameTooLarge as exc:
            frame, sent_as_is = encode(error(message.get("id"), -32000, str(exc))), False
        except ValueError as exc:  # NaN in a result
            frame = encode(error(message.get("id"), -32000, f"unencodable reply: {exc}"))
            sent_as_is = False
        self.writer.write(frame)
        await self.writer.drain()
        return sent_as_is

    async def run(self, first: dict[str, Any], reader: asyncio.StreamReader) -> None:
        next_frame: asyncio.Future[Any] = asyncio.ensure_future(asyncio.sleep(0, first))
        try:
            while True:
                waiting: set[asyncio.Future[Any]] = {next_frame}
                if self.work is not None:
                    waiting.add(self.work)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if self.work is not None and self.work in done:
                    self.work = None
                if next_frame not in done:
                    continue
                message = next_frame.result()
                if message is None:
                    if self.work is not None and self.work_method == "tasks.start":
                        await self.work  # a start finishes and parks for resume
                        self.work = None
                    return
                next_frame = asyncio.ensure_future(read_frame(reader))
                if not await self.receive(message):
                    return
        finally:
            next_frame.cancel()
            await self.stop_work()
            self.channel.live.discard(self.id)

    async def receive(self, message: dict[str, Any]) -> bool:
        method = message.get("method", "")
        msg_id = message.get("id")
        if method in ("tasks.cancel", "bye"):
            if self.work is not None:
                await self.stop_work()
                await self.send(error(self.work_id, -32000, f"{method} interrupted the task"))
            await self.channel.cancel(self.id)
            if method == "bye":
                await self.send(reply(msg_id, {"goodbye": True}))
                return False
            await self.send(reply(msg_id, {"cancelled": True}))
        elif self.work is not None:
            await self.send(error(msg_id, -32600, f"{method}: a task call is still running"))
        elif method in ("tasks.start", "tasks.grade"):
            self.work = asyncio.create_task(self.handle(message))
            self.work_id, self.work_method = msg_id, method
        else:
            await self.handle(message)
        return True

    async def stop_work(self) -> None:
        if self.work is not None:
            work, self.work = self.work, None
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work

    async def handle(self, message: dict[str, Any]) -> None:
        method = message.get("method", "")
        params = message.get("params") or {}
        msg_id = message.get("id")
        try:
            if not isinstance(params, dict):
                raise _BadParams(f"{method}: params must be an object")
            if method == "hello":
                result = self.hello(params)
            elif method == "tasks.list":
                result = {"tasks": [t.manifest() for t in self.channel.env.templates.values()]}
            elif method == "tasks.start":
                result = await self.start(params)
            elif method == "tasks.grade":
                result = await self.grade(params)
            else:
                await self.send(error(msg_id, -32601, f"method not found: {method}"))
                return
        except _BadParams as exc:
            await self.send(error(msg_id, -32602, str(exc)))
            return
        except NoTaskInProgress as exc:
            await self.send(error(msg_id, -32600, str(exc)))
            return
        except Exception as exc:
            await self.send(error(msg_id, -32000, f"{type(exc).__name__}: {exc}"))
            return
        if not await self.send(reply(msg_id, result)) and method == "tasks.start":
            # The prompt never reached the client: don't leave its task running (hud does so).
            await self.channel.cancel(self.id)

    def hello(self, params: dict[str, Any]) -> dict[str, Any]:
        requested = params.get("session_id")
        if requested is not None and requested != self.id:
            if not isinstance(requested, str):
                raise _BadParams("hello: 'session_id' must be a string")
            if requested in self.channel.live:
                raise NoTaskInProgress(f"session {requested!r} has a live connection")
            if requested not in self.channel.runners:
                raise NoTaskInProgress(f"unknown session: {requested!r}")
            self.channel.live.discard(self.id)
            self.id = requested
            self.channel.live.add(self.id)
        for key in ("workspace_routes", "connections"):
            # envkit has no workspaces to route into, but checks the shape as hud does.
            if not isinstance(params.get(key, []), list):
                raise _BadParams(f"hello: {key!r} must be a list")
        env = self.channel.env
        return {
            "session_id": self.id,
            "env": {"name": env.name, "version": env.version},
            "bindings": self.channel.bindings(),
        }

    async def start(self, params: dict[str, Any]) -> dict[str, Any]:
        template_id = params.get("id")
        if not isinstance(template_id, str):
            raise _BadParams("tasks.start: 'id' must be a string")
        args = params.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise _BadParams("tasks.start: 'args' must be an object")
        template = self.channel.env.templates.get(template_id)
        if template is None:
            raise _BadParams(f"unknown task: {template_id!r}")
        await self.channel.cancel(self.id)
        runner = Runner(template, args)  # TypeError on bad args → -32000, as hud answers
        self.channel.runners[self.id] = runner
        try:
            return _jsonable(await runner.start())
        except BaseException:
            self.channel.runners.pop(self.id, None)
            await runner.cancel()
            raise

    async def grade(self, params: dict[str, Any]) -> dict[str, Any]:
        runner = self.channel.runners.pop(self.id, None)
        if runner is None:
            runner = self._adopt_parked()
        return await runner.grade(params.get("answer"))

    def _adopt_parked(self) -> Runner:
        parked = sorted(s for s in self.channel.runners if s not in self.channel.live)
        if not parked:
            raise NoTaskInProgress("no task in progress")
        if len(parked) > 1:
            raise NoTaskInProgress(
                f"{len(parked)} parked sessions ({', '.join(parked)}); "
                "resume one by sending hello with its session_id"
            )
        return self.channel.runners.pop(parked[0])


class _BadParams(ValueError):
    pass


async def _tunnel(
    channel: Channel, first: dict[str, Any], reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    msg_id = first.get("id")
    params = first.get("params")
    name = params.get("capability") if isinstance(params, dict) else None
    # Codes as hud's server answers: a malformed request is -32602, an unknown name -32000.
    if not isinstance(name, str):
        writer.write(encode(error(msg_id, -32602, "tunnel.open: 'capability' must be a string")))
        await writer.drain()
        return
    url = channel.capability_urls.get(name)
    if url is None:
        writer.write(encode(error(msg_id, -32000, f"unknown capability: {name!r}")))
        await writer.drain()
        return
    parts = urlsplit(url)
    try:
        backend = await asyncio.open_connection(parts.hostname, parts.port)
    except OSError as exc:
        writer.write(encode(error(msg_id, -32000, f"capability {name!r} unreachable: {exc}")))
        await writer.drain()
        return
    writer.write(encode(reply(msg_id, {"capability": name})))
    await writer.drain()
    await _splice((reader, writer), backend)


async def _splice(a: Any, b: Any) -> None:
    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

    try:
        await asyncio.gather(pump(a[0], b[1]), pump(b[0], a[1]))
    finally:
        a[1].close()
        b[1].close()


async def start_capabilities(env: Environment, channel: Channel) -> list[asyncio.Server]:
    servers = []
    for cap in env.capabilities.values():
        if cap.handler is not None:
            server = await asyncio.start_server(cap.handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            channel.capability_urls[cap.name] = f"tcp://127.0.0.1:{port}"
            servers.append(server)
        elif cap.url:
            channel.capability_urls[cap.name] = cap.url
    return servers


async def bind(env: Environment, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Bind the control channel (capabilities first, so `hello` reports real URLs)."""
    channel = Channel(env)
    cap_servers = await start_capabilities(env, channel)
    # Live connection handlers, so shutdown can end them (and their tasks) cleanly.
    handlers: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
            task.add_done_callback(handlers.discard)
        try:
            try:
                first = await read_frame(reader)
            except FrameTooLarge as exc:
                writer.write(encode(error(None, -32000, str(exc))))
                return
            except ValueError as exc:
                writer.write(encode(error(None, -32700, f"parse error: {exc}")))
                return
            if first is None:
                return
            if first.get("method") == "tunnel.open":
                await _tunnel(channel, first, reader, writer)
            else:
                await Session(channel, writer).run(first, reader)
        except (FrameTooLarge, ValueError) as exc:
            with contextlib.suppress(Exception):
                writer.write(encode(error(None, -32000, str(exc))))
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()

    server = await asyncio.start_server(
        accept, host=host, port=port, limit=FRAME_LIMIT_BYTES + 1
    )
    server._hud_ray_state = (channel, handlers, cap_servers)  # type: ignore[attr-defined]
    return server


async def shutdown(server: asyncio.Server) -> None:
    """Stop accepting, end every connection, close every suspended task (its `finally`
    blocks run), stop capability servers — what hud's server does on SIGTERM."""
    server.close()
    channel, handlers, cap_servers = server._hud_ray_state  # type: ignore[attr-defined]
    pending = list(handlers)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for session_id in list(channel.runners):
        await channel.cancel(session_id)
    for cap_server in cap_servers:
        cap_server.close()


async def serve(env: Environment, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run start hooks, bind, announce `HUD_SERVE_PORT=<port>`, serve until cancelled."""
    for hook in env._on_start:
        await hook()
    server: asyncio.Server | None = None
    try:
        server = await bind(env, host, port)
        print(f"HUD_SERVE_PORT={server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()
    finally:
        if server is not None:
            await shutdown(server)
        for hook in reversed(env._on_stop):
            with contextlib.suppress(Exception):
                await hook()
