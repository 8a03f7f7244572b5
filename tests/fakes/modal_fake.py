"""A stand-in for the `modal` module at the adapter's seam, behaving like Modal on loopback.

Select it with `--provider-opt sdk=tests.fakes.modal_fake:sdk` (resolved by import path in
each Ray worker; the repo root must be importable, as it is from a checkout's cwd).

What is real here:
- errors are the REAL `modal.exception` classes, tunnels the REAL `modal.Tunnel`;
- every call is checked against the REAL signature of the `modal` function it stands for
  (`inspect.signature(...).bind`), must use the `.aio` form where Modal has one (the blocking
  form raises), and is recorded in calls.jsonl for the drift test;
- a sandbox runs the entrypoint argv the adapter passed (the gate shipped as `python3 -c`)
  as a local process group, with the env and secrets it was given. Emulating a container's
  own network namespace, the gate's `--port P` becomes port 0 on 127.0.0.1 and the port it
  prints (HUD_RAY_GATE_PORT=) is published as the tunnel for container port P.

State is a directory of JSON files, so every process sees the same sandboxes (Ray workers,
the driver, `hud-ray reap`): $HUD_RAY_MODAL_FAKE_DIR, else $HUD_RAY_STATE_DIR/modal_fake.
    apps/<name>.json            {"app_id"}
    images/<id>.json            a built image
    sandboxes/<id>.json|.out|.err   record (no secret values), stdout, stderr
    names/<app_id>__<name>      a running sandbox's name claim (O_EXCL: unique across processes)
    faults.json                 injected errors, see set_faults()
    calls.jsonl                 one line per SDK call: name, aio, positional count, keywords
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import modal
import modal.exception as exception
import modal.io_streams
import psutil

REPO = Path(__file__).resolve().parents[2]
GATE_PORT_LINE = "HUD_RAY_GATE_PORT="
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROCS: dict[str, subprocess.Popen] = {}  # sandboxes this process started (reaps zombies)

REAL = {
    "App.lookup": modal.App.lookup,
    "Image.from_registry": modal.Image.from_registry,
    "Image.from_name": modal.Image.from_name,
    "Image.from_id": modal.Image.from_id,
    "Image.build": modal.Image.build,
    "Secret.from_dict": modal.Secret.from_dict,
    "Secret.from_name": modal.Secret.from_name,
    "Sandbox.create": modal.Sandbox.create,
    "Sandbox.from_name": modal.Sandbox.from_name,
    "Sandbox.from_id": modal.Sandbox.from_id,
    "Sandbox.list": modal.Sandbox.list,
    "Sandbox.tunnels": modal.Sandbox.tunnels,
    "Sandbox.terminate": modal.Sandbox.terminate,
    "Sandbox.poll": modal.Sandbox.poll,
    "Sandbox.get_tags": modal.Sandbox.get_tags,
    "StreamReader.read": modal.io_streams.StreamReader.read,
}


# --- state -----------------------------------------------------------------------------
def state_dir() -> Path:
    explicit = os.environ.get("HUD_RAY_MODAL_FAKE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("HUD_RAY_STATE_DIR") or os.path.join(tempfile.gettempdir(), "hud_ray")
    return Path(base) / "modal_fake"


def _path(*parts: str) -> Path:
    path = state_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked():
    with open(_path("faults.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def set_faults(**points: Any) -> None:
    """Inject errors by call point: a list of modal.exception names is consumed one per call
    (FIFO), a string is sticky. Points: lookup, build, create (before creating), create_lost
    (after creating: the reply is "lost"), tunnels ("never" = tunnels never appear), list,
    terminate."""
    with _locked():
        faults = _read(_path("faults.json")) or {}
        faults.update(points)
        _write(_path("faults.json"), faults)


def _fault(point: str) -> str | None:
    with _locked():
        faults = _read(_path("faults.json")) or {}
        value = faults.get(point)
        if isinstance(value, list):
            if not value:
                return None
            name = value.pop(0)
            _write(_path("faults.json"), faults)
            return name
        return value


def _raise_fault(point: str) -> None:
    name = _fault(point)
    if name and name != "never":
        message = f"fake modal: injected {name} at {point}"
        if name == "ImageBuildError":  # the one Modal error with a required extra argument
            raise exception.ImageBuildError(message, image_id="im-failedbuild")
        raise getattr(exception, name)(message)


def calls() -> list[dict[str, Any]]:
    path = _path("calls.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check(name: str, aio: bool, args: tuple, kwargs: dict[str, Any]) -> None:
    """Fail like a drifted SDK would: unknown keyword, missing .aio, wrong arity."""
    real = REAL[name]
    if aio and not hasattr(real, "aio"):
        raise AttributeError(f"modal {name} has no .aio form")
    sig = inspect.signature(real)
    first = next(iter(sig.parameters), "")
    sig.bind(*((None,) if first in ("self", "cls") else ()), *args, **kwargs)
    line = json.dumps({"call": name, "aio": aio, "nargs": len(args), "kwargs": sorted(kwargs)})
    with open(_path("calls.jsonl"), "a") as fh:
        fh.write(line + "\n")


class _Fn:
    """A function with an `.aio` form, like synchronicity's FunctionWithAio."""

    def __init__(self, name: str, impl: Any) -> None:
        self.name, self.impl = name, impl

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"blocking modal {self.name}() from async code: use .aio")

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        _check(self.name, True, args, kwargs)
        return self.impl(*args, **kwargs)


# --- apps, images, secrets -----------------------------------------------------------
class _App:
    def __init__(self, name: str, app_id: str) -> None:
        self.name, self.app_id = name, app_id


async def _lookup(name: str, *, client: Any = None, environment_name: str | None = None,
                  create_if_missing: bool = False) -> _App:
    _raise_fault("lookup")
    path = _path("apps", f"{name}.json")
    if not path.exists():
        if not create_if_missing:
            raise exception.NotFoundError(f"App '{name}' not found")
        with contextlib.suppress(FileExistsError):  # two processes may race: one wins
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, json.dumps({"app_id": "ap-" + secrets.token_hex(8)}).encode())
            os.close(fd)
    for _ in range(100):  # the winner may not have written yet
        data = _read(path)
        if data:
            return _App(name, data["app_id"])
        await asyncio.sleep(0.01)
    raise exception.InternalError(f"app file {path} unreadable")


class _Image:
    def __init__(self, kind: str, ref: str, object_id: str | None = None) -> None:
        self.kind, self.ref, self.object_id = kind, ref, object_id
        self.build = _Fn("Image.build", self._build)

    async def _build(self, app: Any = None) -> _Image:
        _raise_fault("build")
        digest = hashlib.sha1(f"{self.kind}:{self.ref}".encode()).hexdigest()[:20]
        self.object_id = f"im-{digest}"
        _write(_path("images", f"{self.object_id}.json"), {"kind": self.kind, "ref": self.ref})
        return self


def _image_ns() -> SimpleNamespace:
    def from_registry(tag: str, secret: Any = None, **kwargs: Any) -> _Image:
        _check("Image.from_registry", False, (tag,), {"secret": secret, **kwargs})
        return _Image("registry", tag)

    def from_name(name: str, **kwargs: Any) -> _Image:
        _check("Image.from_name", False, (name,), kwargs)
        return _Image("name", name)

    def from_id(image_id: str, **kwargs: Any) -> _Image:
        _check("Image.from_id", False, (image_id,), kwargs)
        return _Image("id", image_id, object_id=image_id)

    def debian_slim(python_version: str | None = None) -> _Image:
        return _Image("definition", f"debian_slim:{python_version}")

    return SimpleNamespace(from_registry=from_registry, from_name=from_name, from_id=from_id,
                           debian_slim=debian_slim)


def _secret_ns() -> SimpleNamespace:
    def from_dict(env_dict: dict[str, str | None] | None = None) -> SimpleNamespace:
        _check("Secret.from_dict", False, (env_dict or {},), {})
        return SimpleNamespace(env={k: v for k, v in (env_dict or {}).items() if v is not None})

    def from_name(name: str, **kwargs: Any) -> SimpleNamespace:
        _check("Secret.from_name", False, (name,), kwargs)
        return SimpleNamespace(env={}, name=name)

    return SimpleNamespace(from_dict=from_dict, from_name=from_name)


# --- sandboxes ---------------------------------------------------------------------------
def _record(sandbox_id: str) -> dict[str, Any] | None:
    return _read(_path("sandboxes", f"{sandbox_id}.json"))


def _finish(rec: dict[str, Any], code: int) -> None:
    if rec.get("returncode") is None:
        rec["returncode"] = code
        _write(_path("sandboxes", f"{rec['sandbox_id']}.json"), rec)
    claim = _path("names", f"{rec['app_id']}__{rec['name']}")
    with contextlib.suppress(OSError):
        if rec.get("name") and claim.read_text() == rec["sandbox_id"]:
            claim.unlink()


def _kill(rec: dict[str, Any]) -> None:
    pid = rec.get("pid")
    with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
        if _same_process(rec):
            os.killpg(pid, signal.SIGKILL)
    proc = _PROCS.pop(rec["sandbox_id"], None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _same_process(rec: dict[str, Any]) -> bool:
    try:
        proc = psutil.Process(rec["pid"])
        return abs(proc.create_time() - rec["started"]) < 0.01 and (
            proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, KeyError, TypeError):
        return False


def _alive(rec: dict[str, Any]) -> bool:
    """Running? Also enforces `timeout` lazily, from any process (exit code 124 like Modal)."""
    if rec.get("returncode") is not None:
        return False
    proc = _PROCS.get(rec["sandbox_id"])
    if proc is not None and proc.poll() is not None:
        _PROCS.pop(rec["sandbox_id"], None)
        _finish(rec, proc.returncode)
        return False
    if proc is None and not _same_process(rec):
        _finish(rec, rec.get("exit_hint", 0))
        return False
    if time.time() > rec["created_at"] + rec["timeout"]:
        _kill(rec)
        _finish(rec, 124)
        return False
    return True


def _netns(argv: list[str]) -> tuple[list[str], int | None]:
    """Our gate binds `--port P` on 0.0.0.0 inside a container; here it binds a free port on
    127.0.0.1 instead (its own network namespace, emulated). Other argv runs verbatim."""
    if len(argv) < 3 or argv[1] != "-c" or GATE_PORT_LINE not in argv[2]:
        return argv, None
    split = argv.index("--") if "--" in argv else len(argv)
    head, tail = list(argv[:split]), argv[split:]
    if "--port" not in head:
        return argv, None
    i = head.index("--port")
    port = int(head[i + 1])
    head[i + 1] = "0"
    return [*head, "--host", "127.0.0.1", *tail], port


def _validate(args: tuple, name: str | None, timeout: Any, workdir: str | None,
              env: dict[str, Any] | None, app: Any) -> None:
    if not isinstance(app, _App):
        raise exception.InvalidError("Sandboxes require an App when created outside of a Modal container.")
    if not all(isinstance(a, str) for a in args):
        raise exception.InvalidError("All entrypoint arguments must be strings")
    if sum(len(a) for a in args) > 2**16:
        raise exception.InvalidError("Total length of CMD arguments cannot exceed 65536 bytes")
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise exception.InvalidError(f"timeout must be an int, got {timeout!r}")
    if name is not None and not _NAME.match(name):
        raise exception.InvalidError(f"Invalid Sandbox name: '{name}'.")
    if workdir is not None and not workdir.startswith("/"):
        raise exception.InvalidError(f"workdir must be an absolute path, got: {workdir}")
    for key in env or {}:
        if not _ENV_KEY.match(key):
            raise exception.InvalidError(f"Secret key name {key!r} is invalid")


def _claim(app_id: str, name: str, sandbox_id: str) -> None:
    path = _path("names", f"{app_id}__{name}")
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _record(path.read_text().strip() or "-")
            if holder is not None and _alive(holder):
                raise exception.AlreadyExistsError(
                    f"Sandbox with name '{name}' already exists") from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        os.write(fd, sandbox_id.encode())
        os.close(fd)
        return
    raise exception.ConflictError(f"name {name!r} is contended")


async def _create(*args: str, app: Any = None, name: str | None = None,
                  tags: dict[str, str] | None = None, image: Any = None,
                  env: dict[str, str | None] | None = None, secrets: Any = None,
                  timeout: int | None = 300, workdir: str | None = None,  # noqa: ASYNC109 - Modal's keyword
                  unencrypted_ports: Any = (), **other: Any) -> _Sandbox:
    _raise_fault("create")
    _validate(args, name, timeout, workdir, env, app)
    if image is not None and image.kind == "id" and not _path("images", f"{image.object_id}.json").exists():
        raise exception.NotFoundError(f"Image {image.object_id} not found")
    sandbox_id = "sb-" + secrets_token()
    if name:
        _claim(app.app_id, name, sandbox_id)
    argv, gate_port = _netns(list(args))
    run_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
               "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    for secret in secrets or []:
        run_env.update(secret.env)
    run_env.update({k: v for k, v in (env or {}).items() if v is not None})
    rec: dict[str, Any] = {
        "sandbox_id": sandbox_id, "app_id": app.app_id, "name": name or "", "tags": tags or {},
        "created_at": time.time(), "timeout": timeout, "gate_port": gate_port,
        "ports": list(unencrypted_ports), "image_id": getattr(image, "object_id", None),
        "workdir": workdir, "env_keys": sorted(run_env), "returncode": None,
        "options": {k: v for k, v in other.items() if isinstance(v, str | int | float | list)},
    }
    if _spawn(rec, argv, run_env, workdir):
        asyncio.get_running_loop().call_later(timeout, _expire, sandbox_id)
    _raise_fault("create_lost")
    return _Sandbox(sandbox_id)


def _spawn(rec: dict[str, Any], argv: list[str], env: dict[str, str], workdir: str | None) -> bool:
    """Start the sandbox's process group. Synchronous on purpose: a fork is quick, and the
    process must outlive the caller's event loop (a Modal sandbox outlives its client)."""
    sandbox_id = rec["sandbox_id"]
    out, err = _path("sandboxes", f"{sandbox_id}.out"), _path("sandboxes", f"{sandbox_id}.err")
    try:
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(argv, cwd=workdir or str(REPO), env=env,
                                    stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                    start_new_session=True)
    except OSError as exc:  # like a container whose entrypoint is missing: it exits at once
        err.write_text(f"exec {argv[0]!r}: {exc}\n")
        rec.update(pid=None, started=None)
        _write(_path("sandboxes", f"{sandbox_id}.json"), rec)
        _finish(rec, 127)
        return False
    _PROCS[sandbox_id] = proc
    rec.update(pid=proc.pid, started=psutil.Process(proc.pid).create_time())
    _write(_path("sandboxes", f"{sandbox_id}.json"), rec)
    return True


def secrets_token() -> str:
    return secrets.token_hex(8)


def _expire(sandbox_id: str) -> None:
    rec = _record(sandbox_id)
    if rec is not None:
        _alive(rec)


class _Stream:
    def __init__(self, sandbox_id: str, suffix: str) -> None:
        self.sandbox_id, self.suffix = sandbox_id, suffix
        self.read = _Fn("StreamReader.read", self._read)

    async def _read(self) -> str:
        # Modal's read() returns at EOF, i.e. when the sandbox ends; state is cross-process,
        # so poll it.
        while True:
            rec = _record(self.sandbox_id)
            if rec is None or not _alive(rec):
                break
            await asyncio.sleep(0.05)
        path = _path("sandboxes", f"{self.sandbox_id}.{self.suffix}")
        return path.read_text(errors="replace") if path.exists() else ""


class _Sandbox:
    def __init__(self, sandbox_id: str) -> None:
        self.object_id = sandbox_id
        self.tunnels = _Fn("Sandbox.tunnels", self._tunnels)
        self.terminate = _Fn("Sandbox.terminate", self._terminate)
        self.poll = _Fn("Sandbox.poll", self._poll)
        self.get_tags = _Fn("Sandbox.get_tags", self._get_tags)
        self.stdout = _Stream(sandbox_id, "out")
        self.stderr = _Stream(sandbox_id, "err")

    def _rec(self) -> dict[str, Any]:
        rec = _record(self.object_id)
        if rec is None:
            raise exception.NotFoundError(f"Sandbox {self.object_id} not found")
        return rec

    async def _tunnels(
        self, timeout: int = 50  # noqa: ASYNC109 - Modal's keyword
    ) -> dict[int, modal.Tunnel]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self._rec()
            if not _alive(rec):
                raise exception.SandboxTerminatedError(f"Sandbox {self.object_id} has finished")
            port = None if _fault("tunnels") == "never" else _published_port(self.object_id)
            if port and rec["gate_port"] in rec["ports"]:
                return {rec["gate_port"]: modal.Tunnel("127.0.0.1", port, "127.0.0.1", port)}
            await asyncio.sleep(0.02)
        raise exception.SandboxTimeoutError("Timed out waiting for tunnels")

    async def _terminate(self, *, wait: bool = False) -> int | None:
        _raise_fault("terminate")
        rec = self._rec()
        if _alive(rec):
            _kill(rec)
            _finish(rec, 137)
        return self._rec()["returncode"] if wait else None

    async def _poll(self) -> int | None:
        rec = self._rec()
        return None if _alive(rec) else rec["returncode"]

    async def _get_tags(self) -> dict[str, str]:
        return self._rec()["tags"]


def _published_port(sandbox_id: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in _path("sandboxes", f"{sandbox_id}.out").read_text().splitlines():
            if line.startswith(GATE_PORT_LINE) and line[len(GATE_PORT_LINE):].isdigit():
                return int(line[len(GATE_PORT_LINE):])
    return None


async def _from_name(app_name: str, name: str, *, environment_name: str | None = None,
                     include_terminated: bool = False, client: Any = None) -> _Sandbox:
    app = _read(_path("apps", f"{app_name}.json"))
    claim = _path("names", f"{app['app_id']}__{name}") if app else None
    with contextlib.suppress(OSError):
        if claim is not None:
            rec = _record(claim.read_text().strip())
            if rec is not None and _alive(rec):
                return _Sandbox(rec["sandbox_id"])
    raise exception.NotFoundError(f"Sandbox with name '{name}' not found in app '{app_name}'")


async def _from_id(sandbox_id: str, client: Any = None) -> _Sandbox:
    sb = _Sandbox(sandbox_id)
    sb._rec()
    return sb


async def _list(*, app_id: str | None = None, tags: dict[str, str] | None = None,
                client: Any = None):
    _raise_fault("list")
    for rec in _records():
        if (app_id is None or rec["app_id"] == app_id) and _alive(rec) and all(
                rec["tags"].get(k) == v for k, v in (tags or {}).items()):
            yield _Sandbox(rec["sandbox_id"])


def _records() -> list[dict[str, Any]]:
    folder = state_dir() / "sandboxes"
    found = [_read(p) for p in folder.glob("sb-*.json")] if folder.is_dir() else []
    return [r for r in found if r]


# --- test helpers ------------------------------------------------------------------------
def demo_image() -> _Image:
    """An image *definition* (what `--provider-opt image=py:MOD:ATTR` points at)."""
    return sdk.Image.debian_slim("3.11")


def live_sandboxes() -> list[dict[str, Any]]:
    """Records of running sandboxes, seen from any process."""
    return [r for r in _records() if _alive(r)]


def all_sandboxes() -> list[dict[str, Any]]:
    return _records()


def kill_all() -> None:
    """Safety net for test teardown: kill every sandbox still running."""
    for rec in live_sandboxes():
        _kill(rec)
        _finish(rec, 137)


sdk = SimpleNamespace(
    App=SimpleNamespace(lookup=_Fn("App.lookup", _lookup)),
    Image=_image_ns(),
    Secret=_secret_ns(),
    Sandbox=SimpleNamespace(create=_Fn("Sandbox.create", _create),
                            from_name=_Fn("Sandbox.from_name", _from_name),
                            from_id=_Fn("Sandbox.from_id", _from_id),
                            list=_Fn("Sandbox.list", _list)),
    Tunnel=modal.Tunnel,
    exception=exception,
)
