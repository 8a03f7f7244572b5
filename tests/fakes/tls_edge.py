"""The Modal fake's TLS edge: what Modal does for an `encrypted_ports` tunnel, on loopback.

    python -m tests.fakes.tls_edge -- <sandbox argv>

Runs the sandbox's argv as its child (same process group: killing the sandbox kills both),
relays the child's stdout, learns the gate's port from its HUD_RAY_GATE_PORT= line, and
serves TLS on 127.0.0.1 with the fake's certificate (tests/fakes/tls_cert.py), terminating
TLS and splicing each connection to the gate in clear — as Modal's edge does in front of
the container. Prints HUD_RAY_TLS_EDGE_PORT=<port>; exits with the child's exit code.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

from tests.fakes.tls_cert import ensure_cert

GATE_PORT_LINE = "HUD_RAY_GATE_PORT="
EDGE_PORT_LINE = "HUD_RAY_TLS_EDGE_PORT="


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()


async def main(argv: list[str]) -> int:
    cert, key = ensure_cert()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    child = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    gate_port: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def relay() -> None:
        assert child.stdout is not None
        while line := await child.stdout.readline():
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            text = line.decode(errors="replace").strip()
            if text.startswith(GATE_PORT_LINE) and not gate_port.done():
                gate_port.set_result(int(text[len(GATE_PORT_LINE):]))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            port = await asyncio.wait_for(asyncio.shield(gate_port), 30)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    print(f"{EDGE_PORT_LINE}{server.sockets[0].getsockname()[1]}", flush=True)
    relaying = asyncio.create_task(relay())
    code = await child.wait()
    await relaying
    server.close()
    return code


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(asyncio.run(main(args[1:] if args[:1] == ["--"] else args)))
