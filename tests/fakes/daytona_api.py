"""A fake Daytona API on loopback that the REAL `AsyncDaytona` client drives (tests only).

Every response is built from the SDK's own generated pydantic models
(`daytona_api_client_async.models`, `daytona_toolbox_api_client_async.models`), and request
bodies are parsed with them, so an SDK upgrade that changes the wire shows up here. Each
"sandbox" is a real local env-server process (`python -m hud_ray.envkit ENV_FILE`) started
when the session exec command arrives; the in-sandbox port is parsed from that command and
mapped by the fake SSH gateway (tests/fakes/ssh_gateway.py) to the process's real port.

Faults are injected per test: `fail()` (any status, with headers such as Retry-After),
`hang_create()`, `slow_start()`, `server_exit_code`, `token_ttl_s`, and the gateway's
`refuse_first_connects` / `drop()`.

Standalone:  python -m tests.fakes.daytona_api --port 0
prints DAYTONA_API_URL=... and DAYTONA_API_KEY=... and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from daytona_api_client_async import models as api
from daytona_toolbox_api_client_async import models as toolbox

from tests.fakes.ssh_gateway import SshGateway

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


@dataclass
class HttpFault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    headers: dict[str, str]
    message: str


class FakeDaytona:
    def __init__(self, *, api_key: str = "fake-key", env_file: str | Path = DEMO_ENV,
                 port: int = 0) -> None:
        self.api_key = api_key
        self.env_file = str(env_file)
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.deleted: dict[str, FakeSandbox] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # token → (sandbox id, expires epoch)
        self.requests: list[list[Any]] = []  # [method, path, status (0 = pending), arrival]
        self.create_bodies: list[dict[str, Any]] = []
        self.snapshot_bodies: list[dict[str, Any]] = []
        self.faults: list[HttpFault] = []
        self.hang_create_s, self.hang_create_times = 0.0, 0
        self.slow_start_s, self.slow_start_times = 0.0, 0
        self.snapshot_build_polls = 0
        self.server_exit_code: int | None = None
        self.token_ttl_s: float | None = None
        self.gateway = SshGateway(self._authorize, self._port_for)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._http = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), name="fake-daytona",
                                        daemon=True)

    # --- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/api"

    def start(self) -> str:
        self.gateway.start()
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        self._http.shutdown()
        self._http.server_close()
        self.gateway.stop()
        with self._lock:
            for sandbox in list(self.sandboxes.values()):
                self._kill(sandbox)

    def __enter__(self) -> FakeDaytona:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults and observations -----------------------------------------------------
    def fail(self, method: str, path: str, status: int, *, times: int = 1,
             headers: dict[str, str] | None = None, message: str | None = None) -> None:
        """The next `times` requests matching `method` and the `path` regex (the request
        path, /api prefix included, as `requests` records it) answer `status`."""
        with self._lock:
            self.faults.append(HttpFault(method.upper(), re.compile(path), status, times,
                                         headers or {}, message or f"injected {status}"))

    def hang_create(self, seconds: float, times: int = 1) -> None:
        """The next creates register the sandbox, then answer only after `seconds`."""
        self.hang_create_s, self.hang_create_times = seconds, times

    def slow_start(self, seconds: float, times: int = 1) -> None:
        """The next sandboxes stay "starting" for `seconds`."""
        self.slow_start_s, self.slow_start_times = seconds, times

    def add_snapshot(self, name: str, state: str = "active", image: str = "fake/image",
                     polls: int = 0) -> None:
        """A snapshot made elsewhere; a "building" one turns active after `polls` reads."""
        with self._lock:
            self.snapshots[name] = self._snapshot_record(name, image, state, None)
            self.snapshots[name]["polls_left"] = polls

    def live(self) -> list[FakeSandbox]:
        with self._lock:
            return list(self.sandboxes.values())

    def count(self, method: str, path: str) -> int:
        return len(self.times(method, path))

    def times(self, method: str, path: str) -> list[float]:
        """When matching requests arrived (monotonic clock), in order."""
        pattern = re.compile(path)
        with self._lock:
            return [t for m, p, _, t in self.requests if m == method and pattern.search(p)]

    def server_pids(self) -> list[int]:
        with self._lock:
            return [c.proc.pid for s in self.sandboxes.values() for cmds in s.sessions.values()
                    for c in cmds.values() if c.proc is not None and c.proc.poll() is None]

    # --- gateway callbacks -----------------------------------------------------------
    def _authorize(self, token: str) -> str | None:
        with self._lock:
            entry = self.tokens.get(token)
            if entry is None or entry[1] < time.time() or entry[0] not in self.sandboxes:
                return None
            return entry[0]

    def _port_for(self, sandbox_id: str, port: int) -> int | None:
        with self._lock:
            sandbox = self.sandboxes.get(sandbox_id)
            return sandbox.ports.get(port) if sandbox else None

    # --- models ----------------------------------------------------------------------
    def _sandbox_model(self, sb: FakeSandbox, state: str | None = None) -> api.Sandbox:
        destroy_at = (sb.created + timedelta(minutes=sb.ttl_minutes)).isoformat() \
            if sb.ttl_minutes else None
        return api.Sandbox(
            id=sb.id, organization_id="org-fake", name=sb.name, snapshot=sb.snapshot,
            user="daytona", env=dict(sb.env), labels=dict(sb.labels), public=False,
            network_block_all=False, kvm=False, target=sb.target, cpu=1, gpu=0, memory=1,
            disk=3, state=api.SandboxState(state or sb.current_state()),
            auto_stop_interval=sb.auto_stop_interval, auto_delete_interval=sb.auto_delete_interval,
            auto_destroy_at=destroy_at, created_at=sb.created.isoformat(),
            toolbox_proxy_url=f"{self.url}/toolbox",
        )

    def _list_item(self, sb: FakeSandbox) -> api.SandboxListItem:
        return api.SandboxListItem(
            id=sb.id, organization_id="org-fake", name=sb.name, target=sb.target,
            user="daytona", public=False, network_block_all=False, cpu=1, gpu=0, memory=1,
            disk=3, labels=dict(sb.labels), state=api.SandboxState(sb.current_state()),
            toolbox_proxy_url=f"{self.url}/toolbox",
        )

    def _snapshot_record(self, name: str, image: str, state: str,
                         body: dict[str, Any] | None) -> dict[str, Any]:
        now = datetime.now(UTC)
        body = body or {}
        return {"id": str(uuid.uuid4()), "name": name, "image_name": image, "state": state,
                "entrypoint": body.get("entrypoint"), "cpu": body.get("cpu") or 1,
                "mem": body.get("memory") or 1, "disk": body.get("disk") or 3,
                "polls_left": self.snapshot_build_polls, "created": now}

    def _snapshot_model(self, rec: dict[str, Any]) -> api.SnapshotDto:
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

    # --- sandboxes -------------------------------------------------------------------
    def _find(self, id_or_name: str) -> FakeSandbox | None:
        sandbox = self.sandboxes.get(id_or_name)
        if sandbox is None:
            sandbox = next((s for s in self.sandboxes.values() if s.name == id_or_name), None)
        return sandbox

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        request = api.CreateSandbox.from_dict(body)
        assert request is not None
        with self._lock:
            name = request.name or f"sandbox-{next(self._ids)}"
            if self._find(name) is not None:
                return 409, f"Sandbox with name {name} already exists"
            if request.snapshot and request.snapshot not in self.snapshots:
                return 404, f"Snapshot {request.snapshot} not found"
            delay = 0.0
            if self.slow_start_times > 0:
                self.slow_start_times -= 1
                delay = self.slow_start_s
            sandbox = FakeSandbox(
                id=str(uuid.uuid4()), name=name, labels=dict(request.labels or {}),
                env=dict(request.env or {}), snapshot=request.snapshot,
                target=request.target or "us", auto_stop_interval=request.auto_stop_interval,
                auto_delete_interval=request.auto_delete_interval,
                ttl_minutes=request.ttl_minutes, created=datetime.now(UTC),
                started_at=time.monotonic() + delay,
            )
            self.sandboxes[sandbox.id] = sandbox
            self.create_bodies.append(body)
            hang = 0.0
            if self.hang_create_times > 0:
                self.hang_create_times -= 1
                hang = self.hang_create_s
        if hang:
            self._stopping.wait(hang)
        return 200, self._sandbox_model(sandbox)

    def _delete(self, sandbox: FakeSandbox) -> api.Sandbox:
        with self._lock:
            self.sandboxes.pop(sandbox.id, None)
            self.deleted[sandbox.id] = sandbox
            for token in [t for t, (sid, _) in self.tokens.items() if sid == sandbox.id]:
                del self.tokens[token]
            self._kill(sandbox)
            sandbox.state = "destroyed"
        self.gateway.drop(sandbox.id)
        return self._sandbox_model(sandbox, "destroying")

    def _kill(self, sandbox: FakeSandbox) -> None:
        for commands in sandbox.sessions.values():
            for command in commands.values():
                if command.proc is not None and command.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(command.proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        command.proc.wait(5)

    def _ssh_access(self, sandbox: FakeSandbox, minutes: int | None) -> api.SshAccessDto:
        token = secrets.token_hex(20)  # ssh(1) would read a leading "-" as an option
        ttl = self.token_ttl_s if self.token_ttl_s is not None else (minutes or 60) * 60
        now = datetime.now(UTC)
        with self._lock:
            self.tokens[token] = (sandbox.id, time.time() + ttl)
        return api.SshAccessDto(
            id=str(uuid.uuid4()), sandbox_id=sandbox.id, token=token,
            expires_at=now + timedelta(seconds=ttl), created_at=now, updated_at=now,
            ssh_command=f"ssh -p {self.gateway.port} {token}@127.0.0.1",
        )

    # --- the env server ("the session exec command") --------------------------------
    def _exec(self, sandbox: FakeSandbox, session_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = toolbox.SessionExecuteRequest.from_dict(body)
        assert request is not None
        with self._lock:
            commands = sandbox.sessions.get(session_id)
            if commands is None:
                return 404, f"session {session_id} not found"
            command = FakeCommand(id=str(uuid.uuid4()), command=request.command)
            commands[command.id] = command
        if not (request.run_async or request.var_async):
            return 400, "fake daytona runs only async (server) commands"
        match = re.search(r"--port[ =](\d+)", request.command)
        if match is None:
            command.output.append("fake daytona: no --port in the command")
            command.exit_code = 2
            return 202, toolbox.SessionExecuteResponse(cmd_id=command.id)
        inside_port = int(match.group(1))
        if self.server_exit_code is not None:
            argv = [sys.executable, "-c",
                    f"import sys; print('fake env: cannot start'); sys.exit({self.server_exit_code})"]
        else:
            argv = [sys.executable, "-m", "hud_ray.envkit", self.env_file,
                    "--host", "127.0.0.1", "--port", "0"]
        command.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=str(REPO),
            env={**os.environ, **sandbox.env, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._pump, args=(sandbox, inside_port, command),
                         daemon=True).start()
        return 202, toolbox.SessionExecuteResponse(cmd_id=command.id)

    def _pump(self, sandbox: FakeSandbox, inside_port: int, command: FakeCommand) -> None:
        assert command.proc is not None and command.proc.stdout is not None
        for raw in command.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            command.output.append(line)
            if line.startswith(PORT_LINE):
                with self._lock:
                    sandbox.ports[inside_port] = int(line[len(PORT_LINE):])
        command.exit_code = command.proc.wait()
        with self._lock:
            sandbox.ports.pop(inside_port, None)

    # --- HTTP dispatch ---------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(raw_path)
        path = parts.path.removeprefix("/api")
        query = parse_qs(parts.query)
        if path.startswith("/socket.io"):
            return 404, "no websocket events here: the SDK falls back to polling", {}
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, "Invalid API key", {}
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.path.search(parts.path):
                    fault.times -= 1
                    return fault.status, fault.message, fault.headers
        data = json.loads(body) if body else {}
        return self._route(method, path, query, data)

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               data: Any) -> tuple[int, Any, dict[str, str]]:
        if m := re.fullmatch(r"/toolbox/([^/]+)(/.*)", path):
            with self._lock:
                sandbox = self.sandboxes.get(m.group(1))
            if sandbox is None:
                return 404, "sandbox not found", {}
            return (*self._toolbox(method, sandbox, m.group(2), data), {})
        if path == "/sandbox" and method == "POST":
            return (*self._create(data), {})
        if path == "/sandbox" and method == "GET":
            wanted = json.loads(query["labels"][0]) if "labels" in query else {}
            with self._lock:
                items = [self._list_item(s) for s in self.sandboxes.values()
                         if all(s.labels.get(k) == v for k, v in wanted.items())]
            return 200, api.ListSandboxesResponse(items=items, next_cursor=None), {}
        if path == "/snapshots" and method == "POST":
            request = api.CreateSnapshot.from_dict(data)
            assert request is not None
            with self._lock:
                if request.name in self.snapshots:
                    return 409, f"Snapshot {request.name} already exists", {}
                state = "building" if self.snapshot_build_polls else "active"
                rec = self._snapshot_record(request.name, request.image_name or "", state, data)
                self.snapshots[request.name] = rec
                self.snapshot_bodies.append(data)
                return 200, self._snapshot_model(rec), {}
        if m := re.fullmatch(r"/snapshots/([^/]+)/activate", path):
            with self._lock:
                rec = next((r for r in self.snapshots.values() if r["id"] == m.group(1)), None)
                if rec is None:
                    return 404, f"Snapshot {m.group(1)} not found", {}
                rec["state"] = "active"
                return 200, self._snapshot_model(rec), {}
        if m := re.fullmatch(r"/snapshots/([^/]+)", path):
            with self._lock:
                rec = self.snapshots.get(m.group(1)) or next(
                    (r for r in self.snapshots.values() if r["id"] == m.group(1)), None)
                if rec is None:
                    return 404, f"Snapshot {m.group(1)} not found", {}
                return 200, self._snapshot_model(rec), {}
        if not (m := re.fullmatch(r"/sandbox/([^/]+)(/[^?]*)?", path)):
            return 404, f"fake daytona: no route {method} {path}", {}
        with self._lock:
            sandbox = self._find(m.group(1))
        if sandbox is None:
            return 404, f"Sandbox {m.group(1)} not found", {}
        rest = m.group(2) or ""
        if rest == "" and method == "GET":
            with self._lock:
                return 200, self._sandbox_model(sandbox), {}
        if rest == "" and method == "DELETE":
            return 200, self._delete(sandbox), {}
        if rest == "/ssh-access" and method == "POST":
            minutes = int(query["expiresInMinutes"][0]) if "expiresInMinutes" in query else None
            return 200, self._ssh_access(sandbox, minutes), {}
        if rest == "/toolbox-proxy-url" and method == "GET":
            return 200, api.ToolboxProxyUrl(url=f"{self.url}/toolbox"), {}
        if rest == "/last-activity" and method == "POST":
            return 201, None, {}
        return 404, f"fake daytona: no route {method} {path}", {}

    def _toolbox(self, method: str, sandbox: FakeSandbox, path: str, data: Any) -> tuple[int, Any]:
        if path == "/process/session" and method == "POST":
            request = toolbox.CreateSessionRequest.from_dict(data)
            assert request is not None
            with self._lock:
                if request.session_id in sandbox.sessions:
                    return 409, f"session {request.session_id} already exists"
                sandbox.sessions[request.session_id] = {}
            return 201, None
        if m := re.fullmatch(r"/process/session/([^/]+)/exec", path):
            return self._exec(sandbox, m.group(1), data)
        if m := re.fullmatch(r"/process/session/([^/]+)/command/([^/]+)(/logs)?", path):
            command = sandbox.sessions.get(m.group(1), {}).get(m.group(2))
            if command is None:
                return 404, "command not found"
            if m.group(3):
                text = "\n".join(command.output)
                return 200, toolbox.SessionCommandLogsResponse(output=text, stdout=text, stderr="")
            return 200, toolbox.Command(id=command.id, command=command.command,
                                        exit_code=command.exit_code)
        return 404, f"fake daytona: no toolbox route {method} {path}"


def _handler(fake: FakeDaytona) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            # Logged on arrival (a hanging create is visible while it hangs); status after.
            entry = [self.command, urlsplit(self.path).path, 0, time.monotonic()]
            with fake._lock:
                fake.requests.append(entry)
            try:
                status, payload, extra = fake.handle(self.command, self.path, self.headers, body)
            except Exception as exc:  # a fake bug must show up as a 500, not a hang
                status, payload, extra = 500, f"fake daytona crashed: {exc!r}", {}
            entry[2] = status
            if payload is None:
                data = b""
            elif isinstance(payload, str):
                data = json.dumps({"statusCode": status, "message": payload,
                                   "error": self.responses.get(status, ("",))[0]}).encode()
            else:
                data = payload.to_json().encode()
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


def provider_options(fake: FakeDaytona, **overrides: Any) -> dict[str, Any]:
    """Options pointing the `daytona` provider at `fake`, with test-sized back-off."""
    return {
        "api_key": fake.api_key,
        "api_url": fake.url,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.2,
        "create_timeout_s": 20.0,
        **overrides,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.daytona_api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="fake-key")
    parser.add_argument("--env-file", default=str(DEMO_ENV))
    args = parser.parse_args(argv)
    fake = FakeDaytona(api_key=args.api_key, env_file=args.env_file, port=args.port)
    fake.start()
    print(f"DAYTONA_API_URL={fake.url}", flush=True)
    print(f"DAYTONA_API_KEY={fake.api_key}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
