"""Real processes and raw sockets for the Core I tests (no mocks of hud_ray code).

- `EnvServer`: an env-server subprocess (envkit, or hud's own server) and its port.
- `RawConn`: a bare JSON-RPC line socket, for frames our own client refuses to send.
- `wait_gone` / `wait_until`: poll a condition with a deadline instead of sleeping.
- `RecordingLocal`: the real local provider, also remembering each env server's PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from providers import SandboxHandle, SandboxSpec
from providers.local import LocalProvider

REPO = Path(__file__).resolve().parents[2]
ENVS = Path(__file__).resolve().parent / "envs"
DEMO_ENV = REPO / "examples" / "demo" / "env.py"
DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"
PORT_LINE = "HUD_SERVE_PORT="


class EnvServer:
    """`python -m <module> ENV_FILE --port 0` in its own process group; `.port` once it serves."""

    def __init__(
        self,
        env_file: Path | str,
        *,
        python: str = sys.executable,
        module: str = "hud_ray.envkit",
        extra_env: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [python, "-m", module, str(env_file), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})},
            start_new_session=True,
        )
        self.port = self._read_port(timeout_s)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_port(self, timeout_s: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip()
                    self.output.append(line)
                    if line.startswith(PORT_LINE):
                        return int(line[len(PORT_LINE) :])
        self.stop()
        raise AssertionError(f"env server never announced its port; output: {self.output}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> EnvServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


async def async_wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_gone(pids: Iterable[int], timeout_s: float = 10.0) -> None:
    pids = set(pids)
    wait_until(lambda: not any(alive(p) for p in pids), timeout_s,
               f"processes {sorted(p for p in pids if alive(p))} to exit")


class RawConn:
    """One TCP connection speaking raw JSON-RPC lines (or raw bytes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = 0

    @classmethod
    async def open(cls, port: int) -> RawConn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=64 << 20)
        return cls(reader, writer)

    async def send(self, frame: dict[str, Any]) -> None:
        self.writer.write(json.dumps(frame, separators=(",", ":")).encode() + b"\n")
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        line = await asyncio.wait_for(self.reader.readline(), timeout_s)
        return json.loads(line) if line else None

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   timeout_s: float = 10.0) -> dict[str, Any]:
        self._ids += 1
        await self.send({"jsonrpc": "2.0", "id": self._ids, "method": method,
                         "params": params or {}})
        reply = await self.recv(timeout_s)
        assert reply is not None, f"{method}: connection closed"
        assert reply.get("id") == self._ids, reply
        return reply

    async def at_eof(self, timeout_s: float = 10.0) -> bool:
        """True once the peer closed (reads and drops anything still in flight)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout_s):
                pass
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


class RecordingLocal(LocalProvider):
    """The real local provider; it only also remembers each env server's PID."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.pids: list[int] = []

    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        handle = await super().create(spec, labels)
        self.pids.append(handle.data["pid"])
        return handle
