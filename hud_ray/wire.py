"""Client for HUD's env wire protocol: line-delimited JSON-RPC 2.0 over TCP.

One control connection per rollout. A reader task matches replies to request ids, so a
`tasks.cancel` or a heartbeat can go out while a long `tasks.grade` is pending (hud's
server runs start/grade beside its read loop for exactly this). Every failure is one of
three typed errors, so a rollout can classify it:

- `TransportError`: the connection could not be made or broke (refused, reset, EOF).
- `WireTimeout`: no reply within the call's timeout (also a `TimeoutError`).
- `ProtocolError`: the peer spoke, but wrongly (garbage, oversized frame, bad shape);
  `RemoteError` is its subclass for a JSON-RPC error object returned by the env.

One rule maps them to a rollout's status, the same in every phase (`hello`, `tasks.start`,
`tasks.grade`, heartbeats):

- `ProtocolError` — garbage (not JSON, not an object, no `result`, a reply without its
  required fields, an incoming frame over 16 MiB) or a JSON-RPC error from the env — is
  `env_error`, not retried: the peer answered, and another sandbox of the same image would
  answer the same. (Our own unencodable or oversized frame is the agent's or the task's.)
- `TransportError` — refused, reset, EOF, closed mid-frame — is `infra_error`, retried in
  a fresh sandbox: the sandbox or the network went away.
- `WireTimeout` — silence — is a `timeout` in a rollout phase. While waiting for `hello`
  the startup budget running out is `infra_error` when the last attempt was refused or
  closed (the sandbox never came up), and `env_error` (`NeverAnswered`) when the env
  accepted the connection and then never answered: a server that does not speak this
  protocol, or hangs, the same in every sandbox of its image.

Framing and the error classes live in `hud_ray.wire_frames`; import them from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hud_ray.wire_frames import (
    FRAME_LIMIT_BYTES,
    FrameTooLarge,
    NeverAnswered,
    ProtocolError,
    RemoteError,
    TransportError,
    UnencodableFrame,
    WireError,
    WireTimeout,
    _restate,
    _short,
    _unwrap,
    encode_frame,
    open_stream,
    parse_url,
    read_frame,
    uses_tls,
)

__all__ = [
    "FRAME_LIMIT_BYTES", "EnvClient", "FrameTooLarge", "NeverAnswered", "ProtocolError",
    "RemoteError", "TransportError", "TunnelForwarder", "UnencodableFrame", "WireError",
    "WireTimeout", "encode_frame", "open_stream", "open_tunnel", "parse_url", "read_frame",
    "splice", "uses_tls",
]


class EnvClient:
    """A control session with one env server. Build it with `await EnvClient.connect(...)`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        url: str,
        preamble: bytes | None = None,
        call_timeout_s: float = 60.0,
    ) -> None:
        self.url = url
        self._preamble = preamble
        self._reader = reader
        self._writer = writer
        self.call_timeout_s = call_timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._write_lock = asyncio.Lock()
        self._broken: WireError | None = None
        self._reader_task = asyncio.create_task(self._read_loop())
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.session_id: str | None = None
        self.env_info: dict[str, Any] = {}
        self.bindings: list[dict[str, Any]] = []

    # --- connection ------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        preamble: bytes | None = None,
        ready_timeout_s: float = 240.0,
        retry_interval_s: float = 0.5,
        call_timeout_s: float = 60.0,
        heartbeat_s: float | None = 120.0,
        hello_params: dict[str, Any] | None = None,
    ) -> EnvClient:
        """Connect and say `hello`, retrying until the env is ready.

        Refused connections, EOF and silence mean "not ready yet" (a forwarded port
        accepts before the env serves); a JSON-RPC error or garbage is a real answer
        and fails at once.
        """
        host, port = parse_url(url)
        deadline = time.monotonic() + ready_timeout_s
        last_error: Exception | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if isinstance(last_error, WireTimeout) and last_error.after_accept:
                    raise NeverAnswered(
                        f"env at {url} accepted connections but never answered hello within "
                        f"{ready_timeout_s:.1f}s (last: {last_error})")
                raise WireTimeout(
                    f"env at {url} not ready after {ready_timeout_s:.1f}s (last: {last_error})"
                )
            attempt_s = min(remaining, max(5.0, retry_interval_s))
            client: EnvClient | None = None
            try:
                reader, writer = await open_stream(
                    host, port, preamble=preamble, timeout_s=attempt_s, tls=uses_tls(url)
                )
                client = cls(
                    reader, writer, url=url, preamble=preamble, call_timeout_s=call_timeout_s
                )
                await client.hello(hello_params, timeout_s=attempt_s)
            except (TransportError, WireTimeout) as exc:
                if isinstance(exc, WireTimeout) and client is not None:
                    exc.after_accept = True  # connected: silence, not a refusal
                last_error = exc
                if client is not None:
                    await client.close()
                await asyncio.sleep(min(retry_interval_s, max(0.0, deadline - time.monotonic())))
                continue
            except BaseException:
                if client is not None:
                    await client.close()
                raise
            if heartbeat_s:
                client._heartbeat_task = asyncio.create_task(client._heartbeat(heartbeat_s))
            return client

    @property
    def preamble(self) -> bytes | None:
        """Bytes sent first on every connection to this env (e.g. a token gate's secret)."""
        return self._preamble

    async def close(self) -> None:
        """Drop the connection without ceremony (use `bye` for a polite goodbye)."""
        for task in (self._heartbeat_task, self._reader_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._fail_pending(TransportError("client closed"))
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()

    # --- calls -----------------------------------------------------------------------
    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        if self._broken is not None:
            raise _restate(self._broken, method)
        request_id = next(self._ids)
        frame = encode_frame(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (method, future)
        limit = self.call_timeout_s if timeout_s is None else timeout_s
        try:
            # asyncio.timeout, not wait_for: no task per call (this is the hot path).
            async with asyncio.timeout(limit):
                async with self._write_lock:
                    self._writer.write(frame)
                    await self._writer.drain()
                reply = await future
        except TimeoutError:
            raise WireTimeout(f"{method}: no reply after {limit:.1f}s") from None
        except (ConnectionError, OSError) as exc:
            raise TransportError(f"{method}: connection broke: {exc!r}") from None
        finally:
            self._pending.pop(request_id, None)
        return _unwrap(method, reply)

    async def hello(
        self, params: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        result = await self.call("hello", params or {}, timeout_s)
        session_id = result.get("session_id")
        if not isinstance(session_id, str):
            raise ProtocolError(f"hello: reply has no session_id: {result!r}")
        self.session_id = session_id
        self.env_info = result.get("env") or {}
        bindings = result.get("bindings") or []
        if not isinstance(bindings, list):
            raise ProtocolError(f"hello: bindings is not a list: {bindings!r}")
        self.bindings = bindings
        return result

    async def list_tasks(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        return (await self.call("tasks.list", {}, timeout_s)).get("tasks", [])

    async def start(
        self, template_id: str, args: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        result = await self.call("tasks.start", {"id": template_id, "args": args}, timeout_s)
        if "prompt" not in result:
            raise ProtocolError(f"tasks.start: reply has no prompt: {_short(result)}")
        return result

    async def grade(self, answer: Any, timeout_s: float | None = None) -> dict[str, Any]:
        result = await self.call("tasks.grade", {"answer": answer}, timeout_s)
        score = result.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ProtocolError(f"tasks.grade: score is not a number: {_short(result)}")
        if not math.isfinite(score):
            raise ProtocolError(f"tasks.grade: score is not finite: {score!r}")
        return result

    async def cancel(self, timeout_s: float = 5.0) -> None:
        await self.call("tasks.cancel", {}, timeout_s)

    async def bye(self, timeout_s: float = 2.0) -> None:
        """Polite goodbye, then close; never raises (teardown path)."""
        with contextlib.suppress(WireError):
            await self.call("bye", {}, timeout_s)
        await self.close()

    # --- tunnels ---------------------------------------------------------------------
    async def open_tunnel(
        self, capability: str, timeout_s: float = 30.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw byte stream to `capability` inside the sandbox (via `tunnel.open`)."""
        return await open_tunnel(self.url, capability, preamble=self._preamble, timeout_s=timeout_s)

    async def forward(self, capability: str, local_port: int = 0) -> TunnelForwarder:
        """Listen on 127.0.0.1 and splice each connection to `capability`."""
        forwarder = TunnelForwarder(self.url, capability, preamble=self._preamble)
        await forwarder.start(local_port)
        return forwarder

    # --- internals -------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while True:
                message = await read_frame(self._reader)
                if message is None:
                    raise TransportError("env closed the connection")
                self._dispatch(message)
        except WireError as exc:
            self._broken = exc
            self._fail_pending(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Never let the reader die silently: pending calls would wait out their timeouts.
            self._broken = ProtocolError(f"reading replies failed: {type(exc).__name__}: {exc}")
            self._fail_pending(self._broken)

    def _dispatch(self, message: dict[str, Any]) -> None:
        entry = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if entry is None:
            if message.get("id") is None and "error" in message:
                # hud's server reports an oversized request with id null, then closes.
                err = message["error"] or {}
                exc = RemoteError("(request)", err.get("code", -32000), err.get("message", ""))
                self._broken = exc
                self._fail_pending(exc)
            return  # a late reply to a call that already timed out
        _, future = entry
        if not future.done():
            future.set_result(message)

    def _fail_pending(self, exc: WireError) -> None:
        for method, future in list(self._pending.values()):
            if not future.done():
                future.set_exception(_restate(exc, method))
                # Retrieved here so an abandoned future never logs "never retrieved".
                future.exception()

    async def _heartbeat(self, every_s: float) -> None:
        # hud's client re-sends hello with its own session id: idle control connections
        # were reset after ≈ 350 s on some substrates.
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(WireError):
                await self.call("hello", {"session_id": self.session_id}, self.call_timeout_s)


async def open_tunnel(
    url: str, capability: str, *, preamble: bytes | None = None, timeout_s: float = 30.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open one `tunnel.open` stream: first frame routes the connection, then raw bytes."""
    host, port = parse_url(url)
    reader, writer = await open_stream(host, port, preamble=preamble, timeout_s=timeout_s,
                                       tls=uses_tls(url))
    try:
        writer.write(
            encode_frame(
                {"jsonrpc": "2.0", "id": 1, "method": "tunnel.open",
                 "params": {"capability": capability}}
            )
        )
        await writer.drain()
        reply = await asyncio.wait_for(read_frame(reader), timeout_s)
        if reply is None:
            raise TransportError(f"tunnel.open {capability!r}: env closed the connection")
        _unwrap("tunnel.open", reply)
    except TimeoutError:
        writer.close()
        raise WireTimeout(f"tunnel.open {capability!r}: no reply after {timeout_s:.1f}s") from None
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Copy bytes both ways until both sides hit EOF; close both writers."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            pass

    try:
        await asyncio.gather(pump(a[0], b[1]), pump(b[0], a[1]))
    finally:
        for _, writer in (a, b):
            writer.close()


class TunnelForwarder:
    """A local listener whose every connection becomes a `tunnel.open` stream."""

    def __init__(self, url: str, capability: str, *, preamble: bytes | None = None) -> None:
        self.url = url
        self.capability = capability
        self._preamble = preamble
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, local_port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", local_port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)
        try:
            remote = await open_tunnel(self.url, self.capability, preamble=self._preamble)
        except (WireError, asyncio.CancelledError):
            writer.close()
            return
        try:
            await splice((reader, writer), remote)
        except asyncio.CancelledError:
            # close() ended a connection still open (the rollout is over). End quietly:
            # asyncio (3.11) logs a cancelled client handler as an error with a traceback,
            # once per open tunnel, on every provider.
            return

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)


Forwarder = Callable[[str], Awaitable[TunnelForwarder]]
