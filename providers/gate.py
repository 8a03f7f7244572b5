"""Token gate: the only public listener in a cloud sandbox whose port is open to the internet.

HUD's env server has no authentication, and a Modal `unencrypted_ports` tunnel is reachable
by anyone who finds the host:port. So the env server binds 127.0.0.1 inside the sandbox and
this gate listens on the public port. Each connection must open with one frame

    {"gate": "<per-sandbox secret>"}\\n          (one JSON line, <= 1 KiB, within 5 s)

Anything else — no frame, a wrong secret, a frame that is too big or too slow — is closed
without a byte from the env server. An authenticated connection is spliced to the env
server byte for byte (bytes sent right after the frame, e.g. `hello`, go through), so the
client then speaks the wire protocol as usual, `tunnel.open` connections included.

The secret comes from an environment variable (HUD_RAY_GATE_SECRET; Modal delivers it as a
secret), never from argv, and is removed from the env server's environment.

Run it as `python -m providers.gate --port 8765 -- <env server argv>` or, with no checkout,
as `python3 -c "$(cat gate.py)" ...`. With a command, the gate starts it (`{port}` in its
argv becomes --upstream-port), relays its stdout, learns the env server's port from its
`HUD_SERVE_PORT=<n>` line when --upstream-port is 0, and exits when it exits.

Standard library only, and written for Python >= 3.8: it runs on whatever python3 the image has.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hmac
import json
import os
import signal
import sys

SECRET_ENV = "HUD_RAY_GATE_SECRET"
MAX_FRAME_BYTES = 1024
AUTH_TIMEOUT_S = 5.0
MAX_PENDING = 64
MIN_SECRET_CHARS = 16
PORT_LINE = "HUD_RAY_GATE_PORT="
SERVE_PORT_LINE = "HUD_SERVE_PORT="
# asyncio.TimeoutError is the builtin only from 3.11 on; the gate runs on older pythons too.
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)


def frame(secret: str) -> bytes:
    """The first frame a client sends on every connection (hud_ray's Endpoint.preamble)."""
    data = (json.dumps({"gate": secret}, separators=(",", ":")) + "\n").encode()
    if len(data) > MAX_FRAME_BYTES:
        raise ValueError(f"gate secret too long: frame is {len(data)} > {MAX_FRAME_BYTES} bytes")
    return data


@functools.lru_cache(maxsize=1)
def source() -> str:
    """This file's text, to ship into a sandbox as `python3 -c SOURCE`."""
    with open(__file__, encoding="utf-8") as fh:
        return fh.read()


class Gate:
    def __init__(self, secret: str, upstream_host: str, upstream_port: int,
                 auth_timeout_s: float = AUTH_TIMEOUT_S, max_frame: int = MAX_FRAME_BYTES,
                 max_pending: int = MAX_PENDING) -> None:
        self._secret = secret.encode()
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.auth_timeout_s = auth_timeout_s
        self.max_frame = max_frame
        self.max_pending = max_pending
        self.upstream_known = asyncio.Event()
        if upstream_port:
            self.upstream_known.set()
        self.pending: dict[asyncio.StreamWriter, None] = {}  # insertion order = age
        self.rejected = 0
        self.accepted = 0

    def set_upstream_port(self, port: int) -> None:
        self.upstream_port = port
        self.upstream_known.set()

    def authentic(self, line: bytes) -> bool:
        try:
            message = json.loads(line)
        except ValueError:
            return False
        token = message.get("gate") if isinstance(message, dict) else None
        if not isinstance(token, str):
            return False
        return hmac.compare_digest(token.encode(), self._secret)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Bound unauthenticated connections by evicting the OLDEST: a slow-loris attacker
        # must then out-pace a real client's first packet, not just hold a few idle sockets.
        if len(self.pending) >= self.max_pending:
            oldest = next(iter(self.pending))
            del self.pending[oldest]
            self._reject(oldest, "evicted: too many unauthenticated connections")
        self.pending[writer] = None
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), self.auth_timeout_s)
        except _TIMEOUTS:
            line, reason = None, "no frame in time"
        except asyncio.LimitOverrunError:
            line, reason = None, "frame too large"
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            line, reason = None, "closed before a frame"
        finally:
            evicted = writer not in self.pending
            self.pending.pop(writer, None)
        if evicted:
            return
        if line is None:
            self._reject(writer, reason)
            return
        if len(line) > self.max_frame or not self.authentic(line):
            self._reject(writer, "bad secret")
            return
        self.accepted += 1
        upstream = await self._dial_upstream()
        if upstream is None:
            writer.close()  # env not up yet: EOF reads as "not ready" to the client
            return
        await splice((reader, writer), upstream)

    async def _dial_upstream(self):
        try:
            await asyncio.wait_for(self.upstream_known.wait(), 60.0)
            return await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), 10.0
            )
        except (*_TIMEOUTS, OSError):
            return None

    def _reject(self, writer: asyncio.StreamWriter, reason: str) -> None:
        self.rejected += 1
        # Internet noise must not flood the sandbox log: the first few, then every 100th.
        if self.rejected <= 10 or self.rejected % 100 == 0:
            peer = writer.get_extra_info("peername")
            log(f"rejected {peer}: {reason} (total {self.rejected})")
        transport = writer.transport
        if transport is not None:
            transport.abort()  # no FIN handshake to wait on, nothing sent


async def splice(a, b) -> None:
    """Copy bytes both ways until both sides reach EOF, then close both."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                chunk = await src.read(65536)
                if not chunk:
                    break
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


def log(message: str) -> None:
    print(f"gate: {message}", file=sys.stderr, flush=True)


async def relay_output(stream: asyncio.StreamReader, gate: Gate) -> None:
    """Echo the env server's stdout; learn its port from `HUD_SERVE_PORT=<n>`."""
    while True:
        try:
            raw = await stream.readline()
        except (ValueError, asyncio.LimitOverrunError):
            continue
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip()
        print(line, flush=True)
        if not gate.upstream_known.is_set() and line.startswith(SERVE_PORT_LINE):
            value = line[len(SERVE_PORT_LINE):].strip()
            if value.isdigit():
                gate.set_upstream_port(int(value))


async def run(args: argparse.Namespace, secret: str) -> int:
    gate = Gate(secret, args.upstream_host, args.upstream_port, args.auth_timeout,
                args.max_frame, args.max_pending)
    server = await asyncio.start_server(gate.handle, args.host, args.port, limit=args.max_frame)
    port = server.sockets[0].getsockname()[1]
    print(f"{PORT_LINE}{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    child = None
    relay = None
    if args.command:
        argv = [a.replace("{port}", str(args.upstream_port)) for a in args.command]
        env = {k: v for k, v in os.environ.items() if k != args.secret_env}
        try:
            child = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                env=env, limit=1 << 20,
            )
        except OSError as exc:
            log(f"cannot start {argv[0]!r}: {exc}")
            server.close()
            return 127
        relay = asyncio.ensure_future(relay_output(child.stdout, gate))
    waits = [asyncio.ensure_future(stop.wait())]
    if child is not None:
        waits.append(asyncio.ensure_future(child.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    server.close()
    code = 0
    if child is not None:
        if child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 5.0)
            except _TIMEOUTS:
                child.kill()
                await child.wait()
        else:
            log(f"env server exited with code {child.returncode}")
        code = child.returncode if not stop.is_set() else 0
        if relay is not None:
            try:
                await asyncio.wait_for(relay, 2.0)
            except _TIMEOUTS:
                pass
    for w in waits:
        w.cancel()
    return code


def parse_args(argv: list[str]) -> argparse.Namespace:
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(prog="gate", description="hud_ray token gate")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True, help="public port (0 = pick one)")
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, default=0,
                        help="env server port; 0 = learn it from the command's HUD_SERVE_PORT line")
    parser.add_argument("--auth-timeout", type=float, default=AUTH_TIMEOUT_S)
    parser.add_argument("--max-frame", type=int, default=MAX_FRAME_BYTES)
    parser.add_argument("--max-pending", type=int, default=MAX_PENDING)
    parser.add_argument("--secret-env", default=SECRET_ENV)
    args = parser.parse_args(argv)
    args.command = command
    if not command and not args.upstream_port:
        parser.error("without a command after --, --upstream-port is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    secret = os.environ.get(args.secret_env, "")
    if len(secret) < MIN_SECRET_CHARS:
        # Fail closed: a gate without a real secret would be an open door.
        log(f"${args.secret_env} is missing or shorter than {MIN_SECRET_CHARS} characters")
        return 2
    return asyncio.run(run(args, secret))


if __name__ == "__main__":
    sys.exit(main())
