"""One control connection to an env server: requests matched to replies by id by a reader
task (so a `tasks.cancel` or a heartbeat can go out while a long call is pending), a broken
connection failing every pending call with its typed error, and the idle heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from hud_ray.wire_frames import (
    ProtocolError,
    RemoteError,
    TransportError,
    WireError,
    WireTimeout,
    _restate,
    _unwrap,
    encode_frame,
    read_frame,
)


class EnvConnection:
    """JSON-RPC calls over one stream; `hud_ray.wire.EnvClient` adds the protocol's methods."""

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
        self._heartbeat_task: asyncio.Task[None] | None = None  # a heartbeat call going
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.session_id: str | None = None
        self.env_info: dict[str, Any] = {}
        self.bindings: list[dict[str, Any]] = []

    @property
    def preamble(self) -> bytes | None:
        """Bytes sent first on every connection to this env (e.g. a token gate's secret)."""
        return self._preamble

    async def close(self) -> None:
        """Drop the connection without ceremony (use `bye` for a polite goodbye)."""
        self._closed = True
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        for task in (self._heartbeat_task, self._reader_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._fail_pending(TransportError("client closed"))
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()

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

    def start_heartbeat(self, every_s: float) -> None:
        """Re-send hello every `every_s` while the connection lives: hud's client does, as
        idle control connections were reset after ≈ 350 s on some substrates. A timer,
        not a sleeping task: most rollouts end long before the first beat (hot path)."""
        loop = asyncio.get_running_loop()
        self._heartbeat_timer = loop.call_later(every_s, self._beat, every_s)

    def _beat(self, every_s: float) -> None:
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat(every_s))

    async def _heartbeat(self, every_s: float) -> None:
        with contextlib.suppress(WireError):
            await self.call("hello", {"session_id": self.session_id}, self.call_timeout_s)
        if self._broken is None and not self._closed:
            self.start_heartbeat(every_s)
