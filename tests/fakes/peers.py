"""Fake env servers for the wire tests: small in-process asyncio peers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from hud_ray.wire import EnvClient

HELLO = {"session_id": "sess-fake", "env": {"name": "fake", "version": "0"}, "bindings": []}

# A peer's behaviour for every non-hello request: write whatever, return False to hang up.
Behaviour = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[bool]]


def reply(msg_id: Any, result: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}).encode() + b"\n"


class Peer:
    """A fake env server: answers hello, hands everything else to `behaviour`."""

    def __init__(self, behaviour: Behaviour | None = None, *, greet: bool = True) -> None:
        self.behaviour = behaviour
        self.greet = greet
        self.frames: list[dict[str, Any]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                self.frames.append(msg)
                if msg.get("method") == "hello" and self.greet:
                    writer.write(reply(msg["id"], HELLO))
                    await writer.drain()
                elif self.behaviour is None or not await self.behaviour(msg, writer):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def serving(peer: Peer) -> AsyncIterator[Peer]:
    peer.server = await asyncio.start_server(peer.handle, "127.0.0.1", 0, limit=64 << 20)
    try:
        yield peer
    finally:
        peer.server.close()


@contextlib.asynccontextmanager
async def connected(peer: Peer, **kw: Any) -> AsyncIterator[EnvClient]:
    async with serving(peer):
        client = await EnvClient.connect(peer.url, ready_timeout_s=5, heartbeat_s=None, **kw)
        try:
            yield client
        finally:
            await client.close()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def silent(msg: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
    return True  # read on, never answer
