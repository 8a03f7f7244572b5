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
import itertools
import json
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from daytona_api_client_async import models as api
from daytona_toolbox_api_client_async import models as toolbox

from tests.fakes.daytona_sandboxes import (
    DEMO_ENV,
    FakeCommand,
    FakeSandbox,
    snapshot_model,
    snapshot_record,
)
from tests.fakes.ssh_gateway import SshGateway


@dataclass
class HttpFault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    headers: dict[str, str]
    message: str


class _Json:
    """A plain JSON payload for the handler (which serialises SDK models by to_json)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def to_json(self) -> str:
        return json.dumps(self.data)


class FakeDaytona:
    def __init__(self, *, api_key: str = "fake-key", env_file: str | Path = DEMO_ENV,
                 port: int = 0) -> None:
        self.api_key = api_key
        self.env_file = str(env_file)
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.deleted: dict[str, FakeSandbox] = {}
        self.activity_refreshes: dict[str, int] = {}  # POST /sandbox/{id}/last-activity
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
        # GET /config's sshGatewayHostKeys: None = the gateway's real key; a list = these.
        self.reported_host_keys: list[str] | None = None
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
                sandbox.kill()

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
            self.snapshots[name] = snapshot_record(name, image, state, None, polls)

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
            return [pid for s in self.sandboxes.values() for pid in s.server_pids()]

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
        return 200, sandbox.model(self.url)

    def _delete(self, sandbox: FakeSandbox) -> api.Sandbox:
        with self._lock:
            self.sandboxes.pop(sandbox.id, None)
            self.deleted[sandbox.id] = sandbox
            for token in [t for t, (sid, _) in self.tokens.items() if sid == sandbox.id]:
                del self.tokens[token]
            sandbox.kill()
            sandbox.state = "destroyed"
        self.gateway.drop(sandbox.id)
        return sandbox.model(self.url, "destroying")

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
        if not (request.run_async or request.var_async):
            return 400, "fake daytona runs only async (server) commands"
        with self._lock:
            commands = sandbox.sessions.get(session_id)
            if commands is None:
                return 404, f"session {session_id} not found"
            command = FakeCommand(id=str(uuid.uuid4()), command=request.command)
            commands[command.id] = command
        sandbox.start_server(command, self.env_file, self.server_exit_code, self._lock)
        return 202, toolbox.SessionExecuteResponse(cmd_id=command.id)

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
        if path == "/config" and method == "GET":  # what the real API reports (subset)
            keys = self.reported_host_keys
            if keys is None:
                keys = [self.gateway.host_key.export_public_key("openssh").decode().strip()]
            return 200, _Json({"version": "fake", "sshGatewayHost": "127.0.0.1",
                               "sshGatewayPort": self.gateway.port,
                               "sshGatewayHostKeys": keys}), {}
        if path == "/sandbox" and method == "POST":
            return (*self._create(data), {})
        if path == "/sandbox" and method == "GET":
            wanted = json.loads(query["labels"][0]) if "labels" in query else {}
            with self._lock:
                items = [s.list_item(self.url) for s in self.sandboxes.values()
                         if all(s.labels.get(k) == v for k, v in wanted.items())]
            return 200, api.ListSandboxesResponse(items=items, next_cursor=None), {}
        if path == "/object-storage/push-access" and method == "GET":
            # Where the SDK uploads a build context (an image directory's COPY sources).
            return 200, api.StorageAccessDto(
                access_key="fake", secret="fake", session_token="fake",
                storage_url="https://objects.invalid", organization_id="org-fake",
                bucket="builds", region="us-east-1"), {}
        if path == "/snapshots" and method == "POST":
            request = api.CreateSnapshot.from_dict(data)
            assert request is not None
            with self._lock:
                if request.name in self.snapshots:
                    return 409, f"Snapshot {request.name} already exists", {}
                state = "building" if self.snapshot_build_polls else "active"
                rec = snapshot_record(request.name, request.image_name or "", state, data,
                                      self.snapshot_build_polls)
                self.snapshots[request.name] = rec
                self.snapshot_bodies.append(data)
                return 200, snapshot_model(rec), {}
        if m := re.fullmatch(r"/snapshots/([^/]+)/activate", path):
            with self._lock:
                rec = next((r for r in self.snapshots.values() if r["id"] == m.group(1)), None)
                if rec is None:
                    return 404, f"Snapshot {m.group(1)} not found", {}
                rec["state"] = "active"
                return 200, snapshot_model(rec), {}
        if m := re.fullmatch(r"/snapshots/([^/]+)", path):
            with self._lock:
                rec = self.snapshots.get(m.group(1)) or next(
                    (r for r in self.snapshots.values() if r["id"] == m.group(1)), None)
                if rec is None:
                    return 404, f"Snapshot {m.group(1)} not found", {}
                return 200, snapshot_model(rec), {}
        if not (m := re.fullmatch(r"/sandbox/([^/]+)(/[^?]*)?", path)):
            return 404, f"fake daytona: no route {method} {path}", {}
        with self._lock:
            sandbox = self._find(m.group(1))
        if sandbox is None:
            return 404, f"Sandbox {m.group(1)} not found", {}
        rest = m.group(2) or ""
        if rest == "" and method == "GET":
            with self._lock:
                return 200, sandbox.model(self.url), {}
        if rest == "" and method == "DELETE":
            return 200, self._delete(sandbox), {}
        if rest == "/ssh-access" and method == "POST":
            minutes = int(query["expiresInMinutes"][0]) if "expiresInMinutes" in query else None
            return 200, self._ssh_access(sandbox, minutes), {}
        if rest == "/toolbox-proxy-url" and method == "GET":
            return 200, api.ToolboxProxyUrl(url=f"{self.url}/toolbox"), {}
        if rest == "/last-activity" and method == "POST":
            with self._lock:
                self.activity_refreshes[sandbox.id] = self.activity_refreshes.get(
                    sandbox.id, 0) + 1
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
