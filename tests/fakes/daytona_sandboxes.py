"""The fake Daytona's sandboxes and snapshots: state, their env-server processes, and their
wire form built from the SDK's own models (tests only; the HTTP side is daytona_api.py).

A sandbox's "env server" is a real local process (`python -m hud_ray.envkit ENV_FILE`)
on a free port; the port the session command asked for (`--port N`, the port *inside*
the sandbox) is mapped to it, which is what the fake SSH gateway forwards to.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from daytona_api_client_async import models as api

REPO = Path(__file__).resolve().parents[2]
DEMO_ENV = REPO / "examples" / "demo" / "env.py"
PORT_LINE = "HUD_SERVE_PORT="


@dataclass
class FakeCommand:
    id: str
    command: str
    proc: subprocess.Popen[bytes] | None = None
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    exit_code: int | None = None


@dataclass
class FakeSandbox:
    id: str
    name: str
    labels: dict[str, str]
    env: dict[str, str]
    snapshot: str | None
    target: str
    auto_stop_interval: int | None
    auto_delete_interval: int | None
    ttl_minutes: int | None
    created: datetime
    started_at: float  # monotonic time it reaches "started"
    state: str = "starting"
    sessions: dict[str, dict[str, FakeCommand]] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)  # port inside → real port

    def current_state(self) -> str:
        if self.state == "starting" and time.monotonic() >= self.started_at:
            self.state = "started"
        return self.state

    # --- wire form -------------------------------------------------------------------
    def model(self, base_url: str, state: str | None = None) -> api.Sandbox:
        destroy_at = (self.created + timedelta(minutes=self.ttl_minutes)).isoformat() \
            if self.ttl_minutes else None
        return api.Sandbox(
            id=self.id, organization_id="org-fake", name=self.name, snapshot=self.snapshot,
            user="daytona", env=dict(self.env), labels=dict(self.labels), public=False,
            network_block_all=False, kvm=False, target=self.target, cpu=1, gpu=0, memory=1,
            disk=3, state=api.SandboxState(state or self.current_state()),
            auto_stop_interval=self.auto_stop_interval,
            auto_delete_interval=self.auto_delete_interval, auto_destroy_at=destroy_at,
            created_at=self.created.isoformat(), toolbox_proxy_url=f"{base_url}/toolbox",
        )

    def list_item(self, base_url: str) -> api.SandboxListItem:
        return api.SandboxListItem(
            id=self.id, organization_id="org-fake", name=self.name, target=self.target,
            user="daytona", public=False, network_block_all=False, cpu=1, gpu=0, memory=1,
            disk=3, labels=dict(self.labels), state=api.SandboxState(self.current_state()),
            toolbox_proxy_url=f"{base_url}/toolbox",
        )

    # --- the env server ----------------------------------------------------------------
    def start_server(self, command: FakeCommand, env_file: str, exit_code: int | None,
                     lock: threading.RLock) -> None:
        """Run `command` the way a sandbox would: only its `--port N` is honoured; the
        process is the envkit server (or, with `exit_code`, one that fails at once)."""
        match = re.search(r"--port[ =](\d+)", command.command)
        if match is None:
            command.output.append("fake daytona: no --port in the command")
            command.exit_code = 2
            return
        if exit_code is not None:
            argv = [sys.executable, "-c",
                    f"import sys; print('fake env: cannot start'); sys.exit({exit_code})"]
        else:
            argv = [sys.executable, "-m", "hud_ray.envkit", env_file,
                    "--host", "127.0.0.1", "--port", "0"]
        command.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=str(REPO),
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._pump, args=(int(match.group(1)), command, lock),
                         daemon=True).start()

    def _pump(self, inside_port: int, command: FakeCommand, lock: threading.RLock) -> None:
        assert command.proc is not None and command.proc.stdout is not None
        for raw in command.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            command.output.append(line)
            if line.startswith(PORT_LINE):
                with lock:
                    self.ports[inside_port] = int(line[len(PORT_LINE):])
        command.exit_code = command.proc.wait()
        with lock:
            self.ports.pop(inside_port, None)

    def kill(self) -> None:
        for commands in self.sessions.values():
            for command in commands.values():
                if command.proc is not None and command.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(command.proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        command.proc.wait(5)

    def server_pids(self) -> list[int]:
        return [c.proc.pid for cmds in self.sessions.values() for c in cmds.values()
                if c.proc is not None and c.proc.poll() is None]


def snapshot_record(name: str, image: str, state: str, body: dict[str, Any] | None,
                    polls: int) -> dict[str, Any]:
    """A snapshot; a "building" one turns active after `polls` reads."""
    body = body or {}
    return {"id": str(uuid.uuid4()), "name": name, "image_name": image, "state": state,
            "entrypoint": body.get("entrypoint"), "cpu": body.get("cpu") or 1,
            "mem": body.get("memory") or 1, "disk": body.get("disk") or 3,
            "polls_left": polls, "created": datetime.now(UTC)}


def snapshot_model(rec: dict[str, Any]) -> api.SnapshotDto:
    if rec["state"] == "building":
        rec["polls_left"] -= 1
        if rec["polls_left"] < 0:
            rec["state"] = "active"
    return api.SnapshotDto(
        id=rec["id"], organization_id="org-fake", general=False, name=rec["name"],
        image_name=rec["image_name"], state=api.SnapshotState(rec["state"]), size=1.0,
        entrypoint=rec["entrypoint"], cpu=rec["cpu"], gpu=0, mem=rec["mem"],
        disk=rec["disk"], error_reason=None, created_at=rec["created"],
        updated_at=rec["created"], last_used_at=None, source_sandbox_id=None,
    )
