"""State and processes of the Modal fake (tests/fakes/modal_fake.py), shared by every process.

A directory of JSON files — $HUD_RAY_MODAL_FAKE_DIR, else $HUD_RAY_STATE_DIR/modal_fake:
    apps/<name>.json                 {"app_id"}
    images/<id>.json                 a built image
    sandboxes/<id>.json|.out|.err    record (no secret values), stdout, stderr
    names/<app_id>__<name>           a running sandbox's name claim (O_EXCL: unique across processes)
    faults.json                      injected errors, see set_faults()
    calls.jsonl                      one line per SDK call: name, aio, positional count, keywords
A sandbox is a local process group; liveness is checked by pid + start time, and `timeout`
is enforced lazily by whichever process looks next (exit code 124, like Modal).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import modal.exception as exception
import psutil

REPO = Path(__file__).resolve().parents[2]
GATE_PORT_LINE = "HUD_RAY_GATE_PORT="
EDGE_PORT_LINE = "HUD_RAY_TLS_EDGE_PORT="  # tests/fakes/tls_edge.py, for encrypted ports
PROCS: dict[str, subprocess.Popen] = {}  # sandboxes this process started (reaps zombies)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def state_dir() -> Path:
    explicit = os.environ.get("HUD_RAY_MODAL_FAKE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("HUD_RAY_STATE_DIR") or os.path.join(tempfile.gettempdir(), "hud_ray")
    return Path(base) / "modal_fake"


def path(*parts: str) -> Path:
    file = state_dir().joinpath(*parts)
    file.parent.mkdir(parents=True, exist_ok=True)
    return file


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def locked():
    with open(path("faults.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def set_faults(**points: Any) -> None:
    """Inject errors by call point: a list of modal.exception names is consumed one per call
    (FIFO), a string is sticky. Points: lookup, build, create (before creating), create_lost
    (after creating: the reply is "lost"), tunnels ("never" = tunnels never appear), list,
    terminate."""
    with locked():
        faults = read_json(path("faults.json")) or {}
        faults.update(points)
        write_json(path("faults.json"), faults)


def fault(point: str) -> str | None:
    with locked():
        faults = read_json(path("faults.json")) or {}
        value = faults.get(point)
        if isinstance(value, list):
            if not value:
                return None
            name = value.pop(0)
            write_json(path("faults.json"), faults)
            return name
        return value


def raise_fault(point: str) -> None:
    name = fault(point)
    if name and name != "never":
        message = f"fake modal: injected {name} at {point}"
        if name == "ImageBuildError":  # the one Modal error with a required extra argument
            raise exception.ImageBuildError(message, image_id="im-failedbuild")
        raise getattr(exception, name)(message)


def calls() -> list[dict[str, Any]]:
    file = path("calls.jsonl")
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


def record(sandbox_id: str) -> dict[str, Any] | None:
    return read_json(path("sandboxes", f"{sandbox_id}.json"))


def records() -> list[dict[str, Any]]:
    folder = state_dir() / "sandboxes"
    found = [read_json(p) for p in folder.glob("sb-*.json")] if folder.is_dir() else []
    return [r for r in found if r]


def finish(rec: dict[str, Any], code: int) -> None:
    if rec.get("returncode") is None:
        rec["returncode"] = code
        write_json(path("sandboxes", f"{rec['sandbox_id']}.json"), rec)
    claim_file = path("names", f"{rec['app_id']}__{rec['name']}")
    with contextlib.suppress(OSError):
        if rec.get("name") and claim_file.read_text() == rec["sandbox_id"]:
            claim_file.unlink()


def kill(rec: dict[str, Any]) -> None:
    pid = rec.get("pid")
    with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
        if same_process(rec):
            os.killpg(pid, signal.SIGKILL)
    proc = PROCS.pop(rec["sandbox_id"], None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def same_process(rec: dict[str, Any]) -> bool:
    try:
        proc = psutil.Process(rec["pid"])
        return abs(proc.create_time() - rec["started"]) < 0.01 and (
            proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, KeyError, TypeError):
        return False


def alive(rec: dict[str, Any]) -> bool:
    """Running? Also enforces `timeout` lazily, from any process (exit code 124 like Modal)."""
    if rec.get("returncode") is not None:
        return False
    proc = PROCS.get(rec["sandbox_id"])
    if proc is not None and proc.poll() is not None:
        PROCS.pop(rec["sandbox_id"], None)
        finish(rec, proc.returncode)
        return False
    if proc is None and not same_process(rec):
        finish(rec, rec.get("exit_hint", 0))
        return False
    if time.time() > rec["created_at"] + rec["timeout"]:
        kill(rec)
        finish(rec, 124)
        return False
    return True


def netns(argv: list[str]) -> tuple[list[str], int | None]:
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


def claim(app_id: str, name: str, sandbox_id: str) -> None:
    claim_file = path("names", f"{app_id}__{name}")
    for _ in range(3):
        try:
            fd = os.open(claim_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = record(claim_file.read_text().strip() or "-")
            if holder is not None and alive(holder):
                raise exception.AlreadyExistsError(
                    f"Sandbox with name '{name}' already exists") from None
            with contextlib.suppress(FileNotFoundError):
                claim_file.unlink()
            continue
        os.write(fd, sandbox_id.encode())
        os.close(fd)
        return
    raise exception.ConflictError(f"name {name!r} is contended")


def spawn(rec: dict[str, Any], argv: list[str], env: dict[str, str], workdir: str | None) -> bool:
    """Start the sandbox's process group. Synchronous on purpose: a fork is quick, and the
    process must outlive the caller's event loop (a Modal sandbox outlives its client)."""
    sandbox_id = rec["sandbox_id"]
    out, err = path("sandboxes", f"{sandbox_id}.out"), path("sandboxes", f"{sandbox_id}.err")
    try:
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(argv, cwd=workdir or str(REPO), env=env,
                                    stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                    start_new_session=True)
    except OSError as exc:  # like a container whose entrypoint is missing: it exits at once
        err.write_text(f"exec {argv[0]!r}: {exc}\n")
        rec.update(pid=None, started=None)
        write_json(path("sandboxes", f"{sandbox_id}.json"), rec)
        finish(rec, 127)
        return False
    PROCS[sandbox_id] = proc
    rec.update(pid=proc.pid, started=psutil.Process(proc.pid).create_time())
    write_json(path("sandboxes", f"{sandbox_id}.json"), rec)
    return True


def expire(sandbox_id: str) -> None:
    rec = record(sandbox_id)
    if rec is not None:
        alive(rec)


def published_port(sandbox_id: str, marker: str = GATE_PORT_LINE) -> int | None:
    with contextlib.suppress(OSError):
        for line in path("sandboxes", f"{sandbox_id}.out").read_text().splitlines():
            if line.startswith(marker) and line[len(marker):].isdigit():
                return int(line[len(marker):])
    return None


def live_sandboxes() -> list[dict[str, Any]]:
    """Records of running sandboxes, seen from any process."""
    return [r for r in records() if alive(r)]


def all_sandboxes() -> list[dict[str, Any]]:
    return records()


def kill_all() -> None:
    """Safety net for test teardown: kill every sandbox still running."""
    for rec in live_sandboxes():
        kill(rec)
        finish(rec, 137)
