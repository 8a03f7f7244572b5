"""The envkit server: HUD's env wire protocol in the standard library.

Semantics follow hud 0.6.21's server (`hud.environment.server`): the first frame on a
connection routes it (`tunnel.open` → raw splice to a capability, else a control
session); start/grade run beside the read loop so `tasks.cancel` and `bye` still reach
them; a dropped connection parks its task for a later `hello {session_id}` to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from typing import Any
from urllib.parse import urlsplit

from .env import Environment, Template

FRAME_LIMIT_BYTES = 16 * 1024 * 1024


class FrameTooLarge(ValueError):
    pass


class NoTaskInProgress(RuntimeError):
    pass


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > FRAME_LIMIT_BYTES:
        raise FrameTooLarge(f"frame is {len(data)} bytes; limit is {FRAME_LIMIT_BYTES}")
    return data + b"\n"


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise FrameTooLarge(f"incoming frame exceeds {FRAME_LIMIT_BYTES} bytes") from None
    except (ConnectionError, OSError):
        return None
    message = json.loads(line)  # ValueError → caller answers -32700 and closes
    if not isinstance(message, dict):
        raise ValueError("frame is not a JSON object")
    return message


def reply(msg_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def error(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def score_frame(template_id: str, evaluation: Any) -> dict[str, Any]:
    """Normalise a template's grade yield to a `{"score": float, ...}` frame."""
    if isinstance(evaluation, dict):
        frame = dict(evaluation)
        score = frame.get("score")
    else:
        score = getattr(evaluation, "reward", evaluation)
        frame = {"score": score}
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise TypeError(f"template {template_id!r} graded with {type(score).__name__}, not a number")
    if not math.isfinite(score):
        raise ValueError(f"template {template_id!r} graded with a non-finite score ({score!r})")
    frame["score"] = float(score)
    return frame


class Runner:
    """One task's suspended generator between `tasks.start` and `tasks.grade`."""

    def __init__(self, template: Template, args: dict[str, Any]) -> None:
        try:
            template.signature.bind(**args)
        except TypeError as exc:
            raise TypeError(f"template {template.id!r}: bad args {sorted(args)}: {exc}") from None
        self.template = template
        self.args = args
        self.gen: Any = None

    async def start(self) -> dict[str, Any]:
        self.gen = self.template.func(**self.args)
        prompt = await self.gen.__anext__()
        if isinstance(prompt, dict) and "prompt" in prompt:
            return prompt
        return {"prompt": prompt}

    async def grade(self, answer: Any) -> dict[str, Any]:
        try:
            evaluation = await self.gen.asend(answer)
        except StopAsyncIteration:
            evaluation = 0.0
        finally:
            await self.cancel()
        return score_frame(self.template.id, evaluation)

    async def cancel(self) -> None:
        if self.gen is not None:
            gen, self.gen = self.gen, None
            with contextlib.suppress(Exception):
                await gen.aclose()


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

    async def send(self, message: dict[str, Any]) -> None:
        try:
            frame = encode(message)
        except FrameTooLarge as exc:
            frame = encode(error(message.get("id"), -32000, str(exc)))
        except ValueError as exc:  # NaN in a result
            frame = encode(error(message.get("id"), -32000, f"unencodable reply: {exc}"))
        self.writer.write(frame)
        await self.writer.drain()

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
        await self.send(reply(msg_id, result))

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
        args = params.get("args") or {}
        if not isinstance(args, dict):
            raise _BadParams("tasks.start: 'args' must be an object")
        template = self.channel.env.templates.get(template_id)
        if template is None:
            raise _BadParams(f"unknown task: {template_id!r}")
        await self.channel.cancel(self.id)
        try:
            runner = Runner(template, args)
        except TypeError as exc:
            raise _BadParams(str(exc)) from None
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
        if len(parked) != 1:
            raise NoTaskInProgress("no task in progress")
        return self.channel.runners.pop(parked[0])


class _BadParams(ValueError):
    pass


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


async def _tunnel(
    channel: Channel, first: dict[str, Any], reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    msg_id = first.get("id")
    name = (first.get("params") or {}).get("capability")
    url = channel.capability_urls.get(name) if isinstance(name, str) else None
    if url is None:
        writer.write(encode(error(msg_id, -32602, f"unknown capability: {name!r}")))
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

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
    server._hud_ray_caps = cap_servers  # type: ignore[attr-defined]  # kept alive with it
    return server


async def serve(env: Environment, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run start hooks, bind, announce `HUD_SERVE_PORT=<port>`, serve until cancelled."""
    for hook in env._on_start:
        await hook()
    server = await bind(env, host, port)
    try:
        print(f"HUD_SERVE_PORT={server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()
    finally:
        server.close()
        for hook in env._on_stop:
            with contextlib.suppress(Exception):
                await hook()
