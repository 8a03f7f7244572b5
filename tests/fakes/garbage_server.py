"""An "env server" that answers one phase with garbage, for the wire rule's CLI test.

    python tests/fakes/garbage_server.py --phase hello|start

Prints HUD_SERVE_PORT=<port> like any env server, answers `hello` properly unless the
phase is `hello`, and answers `tasks.start` with a line that is not JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json

GARBAGE = b"HTTP/1.1 400 Bad Request\r\n"


async def main(phase: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            method = msg.get("method")
            if method == phase or (phase == "start" and method == "tasks.start"):
                writer.write(GARBAGE)
            else:
                result = {"session_id": "s", "env": {"name": "garbage"}, "bindings": []}
                writer.write(json.dumps({"jsonrpc": "2.0", "id": msg.get("id"),
                                         "result": result if method == "hello" else {}}).encode()
                             + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"HUD_SERVE_PORT={server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=["hello", "start"], required=True)
    asyncio.run(main(parser.parse_args().phase))
