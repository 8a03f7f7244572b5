"""The ceiling for B1: a bare asyncio client doing the full protocol exchange
(connect + preamble, hello, tasks.start, tasks.grade, bye) against the sim's stdlib server,
with no provider calls, no rollout bookkeeping, no Ray, no Parquet.

Two shapes: `two_process` (server in a child process, client here — one core each) and
`one_process` (server and client on one event loop, as inside a hud_ray worker).
The child: `python -m bench.baselines.raw_client serve N OPTIONS_JSON` creates N ready sim
sandboxes, prints `{"port": P, "preambles": [...]}` and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from providers import SandboxSpec
from providers.sim import SimProvider

_HELLO = b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{}}\n'
_START = b'{"jsonrpc":"2.0","id":2,"method":"tasks.start","params":{"id":"t","args":{}}}\n'
_GRADE = b'{"jsonrpc":"2.0","id":3,"method":"tasks.grade","params":{"answer":""}}\n'
_BYE = b'{"jsonrpc":"2.0","id":4,"method":"bye","params":{}}\n'


async def make_sandboxes(n: int, options: dict[str, Any]) -> tuple[SimProvider, int, list[bytes]]:
    sim = SimProvider(**{**options, "record": False})
    preambles, port = [], 0
    for i in range(n):
        handle = await sim.create(SandboxSpec(name=f"raw-{i}"), {})
        endpoint = await sim.ready(handle, 10.0)
        port = int(endpoint.url.rsplit(":", 1)[1])
        preambles.append(endpoint.preamble or b"")
    return sim, port, preambles


async def exchange_all(port: int, preambles: list[bytes], concurrency: int) -> float:
    """Run every exchange; returns the wall time they took."""
    sem = asyncio.Semaphore(concurrency)

    async def one(preamble: bytes) -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(preamble + _HELLO)
            for frame in (_START, _GRADE, _BYE):
                line = await reader.readline()
                if b'"error"' in line:
                    raise RuntimeError(f"sim answered an error: {line!r}")
                writer.write(frame)
            await reader.readline()  # bye's reply
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in preambles))
    return time.perf_counter() - t0


def one_process(n: int, options: dict[str, Any], concurrency: int = 256) -> dict[str, float]:
    """{"wall_s", "cpu_s"} of the exchanges alone (sandbox set-up excluded)."""
    async def main() -> dict[str, float]:
        sim, port, preambles = await make_sandboxes(n, options)
        try:
            c0 = time.process_time()
            wall = await exchange_all(port, preambles, concurrency)
            return {"wall_s": wall, "cpu_s": time.process_time() - c0}
        finally:
            await sim.close()

    return asyncio.run(main())


def two_process(n: int, options: dict[str, Any], concurrency: int = 256) -> dict[str, float]:
    import psutil

    child = subprocess.Popen([sys.executable, "-m", "bench.baselines.raw_client", "serve",
                              str(n), json.dumps(options)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        hello = json.loads(child.stdout.readline())
        preambles = [p.encode() for p in hello["preambles"]]
        server = psutil.Process(child.pid)
        s0, c0 = sum(server.cpu_times()[:2]), time.process_time()
        wall = asyncio.run(exchange_all(hello["port"], preambles, concurrency))
        cpu = time.process_time() - c0 + sum(server.cpu_times()[:2]) - s0
        return {"wall_s": wall, "cpu_s": cpu}
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)


def _serve(n: int, options: dict[str, Any]) -> None:
    async def main() -> None:
        sim, port, preambles = await make_sandboxes(n, options)
        print(json.dumps({"port": port, "preambles": [p.decode() for p in preambles]}),
              flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await sim.close()

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit("usage: python -m bench.baselines.raw_client serve N OPTIONS_JSON")
    _serve(int(sys.argv[2]), json.loads(sys.argv[3]))
