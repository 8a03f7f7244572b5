"""A hud env (needs `hud`): the count template and a raw TCP capability "echo" reached by
tunnel.open. Served by `python -m hud.environment.server` in the interop tests."""

from __future__ import annotations

import asyncio

from hud import Environment
from hud.capabilities import Capability

env = Environment("probe", version="0.1.0")
_servers: list[asyncio.Server] = []


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(b"echo:" + line)
        await writer.drain()
    writer.close()


@env.initialize
async def _start_echo() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    _servers.append(server)
    port = server.sockets[0].getsockname()[1]
    env.add_capability(Capability(name="echo", protocol="echo/1", url=f"tcp://127.0.0.1:{port}"))


@env.template(id="count", description="Count occurrences of a letter in a word.")
async def count(text: str = "banana", letter: str = "a"):
    answer = yield f"How many times does the letter {letter!r} appear in {text!r}? Reply with the number."
    expected = text.count(letter)
    try:
        yield 1.0 if int(str(answer).strip()) == expected else 0.0
    except ValueError:
        yield 0.0
