"""A hud env written the way hud 0.6.21's docs write one: an `Environment` with
`@env.template`, FastMCP tools published as an MCP capability from `@env.initialize`,
a raw TCP capability reached through `tunnel.open`, a `returns=` answer type,
`EvaluationResult` grades, and an agent-less verifier template.

The only departure from the docs' snippet: the tool server binds port 0 (a socket
handed to FastMCP) instead of a fixed 8765, so many sandboxes of the `local` provider
can run side by side on one host.
"""

import asyncio
import socket

from fastmcp import FastMCP
from hud.capabilities import Capability
from hud.environment import Environment
from hud.graders import EvaluationResult
from pydantic import BaseModel

env = Environment(name="tools")

KV = {f"k{i}": f"v{i * 37 % 101}" for i in range(20)}

server = FastMCP(name="tools")
_background: set[asyncio.Task[None]] = set()


@server.tool()
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def lookup(key: str) -> str:
    """The value stored under key ('' when absent)."""
    return KV.get(key, "")


async def _kv_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(f"{KV.get(line.decode().strip(), '')}\n".encode())
        await writer.drain()
    writer.close()


@env.initialize
async def _start() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    _background.add(asyncio.create_task(server.run_http_async(show_banner=False, host="127.0.0.1", port=port,
                                              sockets=[sock], log_level="warning")))
    env.add_capability(Capability.mcp(name="tools", url=f"http://127.0.0.1:{port}/mcp"))
    kv = await asyncio.start_server(_kv_service, "127.0.0.1", 0)
    kv_port = kv.sockets[0].getsockname()[1]
    env.add_capability(Capability(name="kv", protocol="kv/1", url=f"tcp://127.0.0.1:{kv_port}"))


@env.template(id="add")
async def add_task(a: int, b: int):
    answer = yield f"Use the add tool to compute {a} + {b}. Reply with the number only."
    ok = (answer or "").strip() == str(a + b)
    yield EvaluationResult(reward=1.0 if ok else 0.0, content=f"expected {a + b}, got {answer!r}")


@env.template(id="chain")
async def chain_task(a: int, b: int, c: int):
    answer = yield (f"Use the add tool twice to compute {a} + {b} + {c}. "
                    "Reply with the number only.")
    yield 1.0 if (answer or "").strip() == str(a + b + c) else 0.0


class Found(BaseModel):
    value: str


@env.template(id="lookup", returns=Found)
async def lookup_task(key: str):
    answer = yield f'Use the lookup tool to find the value of key {key}. Reply as JSON {{"value": ...}}.'
    found = answer.content if answer is not None else None
    yield 1.0 if isinstance(found, Found) and found.value == KV.get(key) else 0.0


@env.template(id="kv_get")
async def kv_get_task(key: str):
    answer = yield f"Read the value of key {key} from the kv capability."
    yield 1.0 if (answer or "").strip() == KV.get(key) else 0.0


@env.template(id="half_credit")
async def half_credit(weight: float = 0.5):
    """Agent-less verifier: its answer is the actor task's evaluation."""
    evaluation = yield "verify the actor's result"
    score = evaluation.get("score", 0.0) if isinstance(evaluation, dict) else 0.0
    yield EvaluationResult(reward=weight * float(score), content=f"verified {score}")
