"""The token gate (providers/gate.py) with real sockets, in front of a real envkit server.

The gate is started the way a sandbox starts it: as the parent of the env server
(`python -m providers.gate --port 0 ... -- python -m hud_ray.envkit ... --port {port}`),
learning the env's port from its HUD_SERVE_PORT line. Every bad first frame must earn
nothing from the env server — the probe sends a complete `hello` right behind it, which an
env server would answer — and a closed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hud_ray.wire import EnvClient, WireTimeout, open_tunnel
from providers import gate
from tests.fakes.procs import REPO, wait_until

SECRET = "s3cret-" + "x" * 40
HELLO = b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{}}\n'
AUTH_TIMEOUT_S = 0.5
ENV_CMD = [sys.executable, "-m", "hud_ray.envkit", "examples/demo/env.py", "--host", "127.0.0.1",
           "--port", "{port}"]


def run(coro):
    return asyncio.run(coro)


class GateProc:
    """A gate subprocess in its own process group; `.port` (public) and `.env_port`."""

    def __init__(self, args: list[str], *, secret: str | None = SECRET, python: list[str] | None = None,
                 wait_env: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if k != gate.SECRET_ENV}
        if secret is not None:
            env[gate.SECRET_ENV] = secret
        cmd = (python or [sys.executable, "-m", "providers.gate"]) + args
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.lines: list[str] = []
        self.port = int(self._line(gate.PORT_LINE))
        self.env_port = int(self._line(gate.SERVE_PORT_LINE)) if wait_env else None

    def _line(self, prefix: str, timeout_s: float = 20.0) -> str:
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix):]
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                raw = self.proc.stdout.readline()
                if not raw:
                    break
                line = raw.decode().rstrip()
                self.lines.append(line)
                if line.startswith(prefix):
                    return line[len(prefix):]
        self.stop()
        raise AssertionError(f"no {prefix} line; stdout {self.lines}, stderr {self.stderr()}")

    def stderr(self) -> str:
        return self.proc.stderr.read().decode() if self.proc.poll() is not None else "(running)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def gated():
    g = GateProc(["--host", "127.0.0.1", "--port", "0", "--auth-timeout", str(AUTH_TIMEOUT_S),
                  "--", *ENV_CMD])
    yield g
    g.stop()


async def _earns_nothing(port: int, first: bytes) -> tuple[bytes, float]:
    """Send `first` then a full hello; return what came back before the close, and when."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        writer.write(first + HELLO)
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(65536), 10.0):
            got += chunk
    except (ConnectionError, OSError):
        pass  # the gate aborts (RST): as closed as it gets
    finally:
        writer.close()
    return got, time.monotonic() - t0


def test_right_secret_control_session_and_tunnel_open(gated):
    async def main():
        preamble = gate.frame(SECRET)
        url = f"tcp://127.0.0.1:{gated.port}"
        client = await EnvClient.connect(url, preamble=preamble, ready_timeout_s=10,
                                         heartbeat_s=None)
        try:
            started = await client.start("arith", {"a": 2, "b": 3, "op": "+"})
            assert "2 + 3" in str(started["prompt"])
            assert (await client.grade("5"))["score"] == 1.0
            reader, writer = await client.open_tunnel("kv")  # a second gated connection
            writer.write(b"GET key1\n")
            await writer.drain()
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"value-")
            writer.close()
        finally:
            await client.bye()

    run(main())


@pytest.mark.parametrize("first", [
    b"",  # no gate frame at all: a plain HUD client
    b"not json\n",
    b"[1, 2]\n",
    b'{"gate": 5}\n',
    b'{"gate": "' + b"y" * len(SECRET) + b'"}\n',  # wrong secret, right length
    b'{"gate": "' + SECRET.encode() + b'x"}\n',  # right secret plus one char
    b'{"gate": "' + SECRET[:-1].encode() + b'"}\n',  # a prefix of it
], ids=["no-secret", "garbage", "array", "not-a-string", "wrong", "longer", "prefix"])
def test_bad_first_frame_gets_nothing_and_is_closed(gated, first):
    got, elapsed = run(_earns_nothing(gated.port, first))
    assert got == b""
    # Closed on the spot (no-secret: its hello is not a gate frame), not by the auth timeout.
    assert elapsed < AUTH_TIMEOUT_S + 2


@pytest.mark.parametrize("newline", [True, False], ids=["long-line", "never-ending"])
def test_oversized_first_frame_is_closed(gated, newline):
    first = b'{"gate": "' + SECRET.encode() + b'", "pad": "' + b"p" * 4096 + b'"}'
    got, _ = run(_earns_nothing(gated.port, first + (b"\n" if newline else b"")))
    assert got == b""


def test_slow_loris_first_frame_is_cut_off_by_total_time(gated):
    """Bytes trickling in faster than any idle timeout still hit the frame's time bound."""

    async def main():
        reader, writer = await asyncio.open_connection("127.0.0.1", gated.port)
        t0 = time.monotonic()

        async def drip():
            with_prefix = b'{"gate": "' + SECRET.encode()
            for i in range(len(with_prefix)):
                writer.write(with_prefix[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.05)  # the attacker's pace, not synchronisation

        dripper = asyncio.create_task(drip())
        got = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 10.0):
                got += chunk
        except (ConnectionError, OSError):
            pass
        elapsed = time.monotonic() - t0
        dripper.cancel()
        await asyncio.gather(dripper, return_exceptions=True)
        writer.close()
        return got, elapsed

    got, elapsed = run(main())
    assert got == b""
    assert AUTH_TIMEOUT_S * 0.9 <= elapsed < AUTH_TIMEOUT_S + 2.0


def test_idle_connections_are_evicted_oldest_first():
    """--max-pending 4, auth timeout 30 s: four silent sockets fill the pre-auth slots; a
    client with the secret still gets in at once, and the OLDEST silent one is dropped
    (long before its timeout) — holding a few idle sockets cannot lock clients out."""
    g = GateProc(["--host", "127.0.0.1", "--port", "0", "--auth-timeout", "30",
                  "--max-pending", "4", "--", *ENV_CMD])

    async def main():
        # Connected one after the other, so the gate accepts (and ages) them in this order.
        idle = [await asyncio.open_connection("127.0.0.1", g.port) for _ in range(4)]
        t0 = time.monotonic()
        client = await EnvClient.connect(f"tcp://127.0.0.1:{g.port}", preamble=gate.frame(SECRET),
                                         ready_timeout_s=5, heartbeat_s=None)
        await client.bye()
        reader, _ = idle[0]
        with contextlib.suppress(ConnectionError, OSError):
            assert await asyncio.wait_for(reader.read(), 5.0) == b""
        assert time.monotonic() - t0 < 5.0
        for _, w in idle:
            w.close()

    try:
        run(main())
    finally:
        g.stop()
    assert "evicted" in g.stderr()


def test_many_concurrent_authenticated_connections(gated):
    async def one(i: int) -> str:
        reader, writer = await open_tunnel(f"tcp://127.0.0.1:{gated.port}", "kv",
                                           preamble=gate.frame(SECRET))
        writer.write(f"GET key{i}\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return line.decode().strip()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(30)))

    assert all(v.startswith("value-") for v in run(main()))


def test_secret_reaches_neither_the_env_server_nor_argv(gated):
    parent = psutil.Process(gated.proc.pid)
    children = parent.children(recursive=True)
    assert children, "the gate should have started the env server"
    for proc in [parent, *children]:
        assert SECRET not in " ".join(proc.cmdline())
    for child in children:
        assert gate.SECRET_ENV not in child.environ()
        assert all(SECRET not in v for v in child.environ().values())
    assert SECRET not in "\n".join(gated.lines)


@pytest.mark.parametrize("secret", [None, "short"], ids=["missing", "too-short"])
def test_gate_fails_closed_without_a_real_secret(secret):
    env = {k: v for k, v in os.environ.items() if k != gate.SECRET_ENV}
    if secret:
        env[gate.SECRET_ENV] = secret
    done = subprocess.run([sys.executable, "-m", "providers.gate", "--port", "0", "--", *ENV_CMD],
                          cwd=REPO, env=env, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert gate.SECRET_ENV in done.stderr.decode()
    assert gate.PORT_LINE not in done.stdout.decode()  # it never listened


def test_gate_exits_when_the_env_server_dies():
    g = GateProc(["--host", "127.0.0.1", "--port", "0", "--", *ENV_CMD])
    try:
        (child,) = psutil.Process(g.proc.pid).children()
        child.send_signal(signal.SIGKILL)
        wait_until(lambda: g.proc.poll() is not None, 10, "the gate to exit with its env")
        assert g.proc.returncode != 0
    finally:
        g.stop()


def test_single_file_runs_stdlib_only_in_front_of_a_running_env(gated, tmp_path: Path):
    """Copied alone and run with -I -S (no site-packages): what ships into a sandbox."""
    copy = tmp_path / "gate.py"
    shutil.copy(REPO / "providers" / "gate.py", copy)
    g = GateProc(["--host", "127.0.0.1", "--port", "0", "--upstream-port", str(gated.env_port)],
                 python=[sys.executable, "-I", "-S", str(copy)], wait_env=False)

    async def main():
        client = await EnvClient.connect(f"tcp://127.0.0.1:{g.port}", preamble=gate.frame(SECRET),
                                         ready_timeout_s=10, heartbeat_s=None)
        assert client.session_id
        await client.bye()
        got, _ = await _earns_nothing(g.port, gate.frame("wrong-" + SECRET))
        assert got == b""

    try:
        run(main())
    finally:
        g.stop()


def test_frame_is_one_bounded_json_line():
    data = gate.frame(SECRET)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert len(data) <= gate.MAX_FRAME_BYTES
    with pytest.raises(ValueError, match="too long"):
        gate.frame("z" * gate.MAX_FRAME_BYTES)


def test_plain_hud_client_never_gets_a_session(gated):
    """hud_ray's own client without the preamble: every try is closed, so it times out."""

    async def main():
        await EnvClient.connect(f"tcp://127.0.0.1:{gated.port}", ready_timeout_s=1.0,
                                heartbeat_s=None, retry_interval_s=0.1)

    with pytest.raises(WireTimeout, match="not ready"):
        run(main())
