"""`tunnel.open`: raw byte streams to a capability inside the sandbox, and a local
listener (`TunnelForwarder`) whose every connection becomes one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hud_ray.wire_frames import (
    TransportError,
    WireError,
    WireTimeout,
    _unwrap,
    encode_frame,
    open_stream,
    parse_url,
    read_frame,
    uses_tls,
)
from providers.gate import splice  # the same byte pump the token gate uses


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
