"""One env file for two servers: hud's own (`python -m hud.environment.server`, where
`hud` imports) and envkit (`python -m hud_ray.envkit`, where it does not). The template
bodies are shared, so the same frames must get the same answers from both."""

from __future__ import annotations

import asyncio
import sys

# Served by envkit (`python -m hud_ray.envkit`, or its zygote) → envkit's Environment;
# by hud's server → hud's. hud is importable in both cases (one install).
_main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
if "hud_ray.envkit.__main__" in sys.modules or getattr(_main_spec, "name", "") == \
        "hud_ray.envkit.__main__":
    from hud_ray.envkit import Environment

    Capability = None
else:
    from hud import Environment
    from hud.capabilities import Capability

env = Environment("dual", version="1.2.3")
_servers: list[asyncio.Server] = []


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(b"echo:" + line)
        await writer.drain()
    writer.close()


if Capability is not None:  # hud: a daemon started by a hook publishes its address

    @env.initialize
    async def _start_echo() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        _servers.append(server)
        port = server.sockets[0].getsockname()[1]
        env.add_capability(
            Capability(name="echo", protocol="echo/1", url=f"tcp://127.0.0.1:{port}")
        )

else:  # envkit: the same daemon, declared
    env.capability("echo", protocol="echo/1")(_echo)


@env.template(id="count", description="count a letter")
async def count(text: str = "banana", letter: str = "a"):
    answer = yield f"How many times does the letter '{letter}' appear in '{text}'?"
    yield float(str(answer).strip() == str(text.count(letter)))


@env.template(id="add", description="add two integers")
async def add(a: int, b: int):
    answer = yield f"Compute {a} + {b}."
    yield float(str(answer).strip() == str(a + b))


@env.template(id="sum_list", description="sum a list")
async def sum_list(numbers: list):
    answer = yield f"Sum {numbers}."
    yield float(str(answer).strip() == str(sum(numbers)))


@env.template(id="truthy", description="grades with a bool")
async def truthy():
    answer = yield "Say yes."
    yield answer == "yes"


@env.template(id="rich", description="message prompt, dict grade")
async def rich():
    answer = yield {"prompt": [{"role": "user", "content": "Say hi."}]}
    yield {"score": 0.5, "info": {"answer": answer}}


@env.template(id="hang", description="grading never finishes")
async def hang():
    yield "Say anything."
    await asyncio.Event().wait()
    yield 1.0


@env.template(id="fail_start", description="raises before the prompt")
async def fail_start():
    raise RuntimeError("fixture database is missing")
    yield "unreachable"


@env.template(id="nan", description="grades with NaN")
async def nan():
    yield "Say anything."
    yield float("nan")
