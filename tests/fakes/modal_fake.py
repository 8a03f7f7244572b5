"""A stand-in for the `modal` module at the adapter's seam, behaving like Modal on loopback.

Select it with `--provider-opt sdk=tests.fakes.modal_fake:sdk` (resolved by import path in
each Ray worker; the repo root must be importable, as it is in the editable dev install).

What is real here:
- errors are the REAL `modal.exception` classes, tunnels the REAL `modal.Tunnel`;
- every call is checked against the REAL signature of the `modal` function it stands for
  (`inspect.signature(...).bind`), must use the `.aio` form where Modal has one (the blocking
  form raises), and is recorded in calls.jsonl for the drift test;
- a sandbox runs the entrypoint argv the adapter passed (the gate shipped as `python3 -c`)
  as a local process group, with the env and secrets it was given. Emulating a container's
  own network namespace, the gate's `--port P` becomes port 0 on 127.0.0.1 and the port it
  prints (HUD_RAY_GATE_PORT=) is published as the tunnel for container port P.

State lives in files (tests/fakes/modal_fake_state.py), so every process — Ray workers,
the driver, `hud-ray reap` — sees the same apps, sandboxes and injected faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import modal
import modal.exception as exception
import modal.io_streams

from tests.fakes import modal_fake_state as st
from tests.fakes.modal_fake_state import (  # noqa: F401 - the fake's public test helpers
    all_sandboxes,
    calls,
    kill_all,
    live_sandboxes,
    set_faults,
    state_dir,
)
from tests.fakes.tls_cert import ensure_cert

SDK = "tests.fakes.modal_fake:sdk"
# The fake's TLS edge presents a self-signed certificate: trust it, as a test CA.
os.environ.setdefault("HUD_RAY_TLS_CA_FILE", ensure_cert()[0])
DEMO_COMMAND = "python -m hud_ray.envkit examples/demo/env.py --host 127.0.0.1 --port {port}"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

REAL = {
    "App.lookup": modal.App.lookup,
    "Image.from_registry": modal.Image.from_registry,
    "Image.from_name": modal.Image.from_name,
    "Image.from_id": modal.Image.from_id,
    "Image.from_dockerfile": modal.Image.from_dockerfile,
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


def _check(name: str, aio: bool, args: tuple, kwargs: dict[str, Any]) -> None:
    """Fail like a drifted SDK would: unknown keyword, missing .aio, wrong arity."""
    real = REAL[name]
    if aio and not hasattr(real, "aio"):
        raise AttributeError(f"modal {name} has no .aio form")
    sig = inspect.signature(real)
    first = next(iter(sig.parameters), "")
    sig.bind(*((None,) if first in ("self", "cls") else ()), *args, **kwargs)
    line = json.dumps({"call": name, "aio": aio, "nargs": len(args), "kwargs": sorted(kwargs)})
    with open(st.path("calls.jsonl"), "a") as fh:
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
    st.raise_fault("lookup")
    path = st.path("apps", f"{name}.json")
    if not path.exists():
        if not create_if_missing:
            raise exception.NotFoundError(f"App '{name}' not found")
        with contextlib.suppress(FileExistsError):  # two processes may race: one wins
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, json.dumps({"app_id": st.new_id("ap")}).encode())
            os.close(fd)
    for _ in range(100):  # the winner may not have written yet
        data = st.read_json(path)
        if data:
            return _App(name, data["app_id"])
        await asyncio.sleep(0.01)
    raise exception.InternalError(f"app file {path} unreadable")


class _Image:
    def __init__(self, kind: str, ref: str, object_id: str | None = None) -> None:
        self.kind, self.ref, self.object_id = kind, ref, object_id
        self.extra: dict[str, Any] = {}
        self.build = _Fn("Image.build", self._build)

    async def _build(self, app: Any = None) -> _Image:
        st.raise_fault("build")
        digest = hashlib.sha1(f"{self.kind}:{self.ref}".encode()).hexdigest()[:20]
        self.object_id = f"im-{digest}"
        st.write_json(st.path("images", f"{self.object_id}.json"),
                      {"kind": self.kind, "ref": self.ref, **self.extra})
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

    def from_dockerfile(path: str, **kwargs: Any) -> _Image:
        """Records what the SDK was given: the Dockerfile's text and the context's files
        (read now: the provider removes its staged context after the build)."""
        _check("Image.from_dockerfile", False, (path,), kwargs)
        context = Path(kwargs.get("context_dir") or Path(path).parent)
        files = sorted(p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file())
        image = _Image("dockerfile", Path(path).read_text())
        image.extra = {"dockerfile": Path(path).name, "context_files": files}
        return image

    def debian_slim(python_version: str | None = None) -> _Image:
        return _Image("definition", f"debian_slim:{python_version}")

    return SimpleNamespace(from_registry=from_registry, from_name=from_name, from_id=from_id,
                           from_dockerfile=from_dockerfile, debian_slim=debian_slim)


def _secret_ns() -> SimpleNamespace:
    def from_dict(env_dict: dict[str, str | None] | None = None) -> SimpleNamespace:
        _check("Secret.from_dict", False, (env_dict or {},), {})
        return SimpleNamespace(env={k: v for k, v in (env_dict or {}).items() if v is not None})

    def from_name(name: str, **kwargs: Any) -> SimpleNamespace:
        _check("Secret.from_name", False, (name,), kwargs)
        return SimpleNamespace(env={}, name=name)

    return SimpleNamespace(from_dict=from_dict, from_name=from_name)


# --- sandboxes ---------------------------------------------------------------------------
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


async def _create(*args: str, app: Any = None, name: str | None = None,
                  tags: dict[str, str] | None = None, image: Any = None,
                  env: dict[str, str | None] | None = None, secrets: Any = None,
                  timeout: int | None = 300, workdir: str | None = None,  # noqa: ASYNC109 - Modal's keyword
                  unencrypted_ports: Any = (), encrypted_ports: Any = (),
                  **other: Any) -> _Sandbox:
    st.raise_fault("create")
    _validate(args, name, timeout, workdir, env, app)
    if image is not None and image.kind == "id" and not st.path("images", f"{image.object_id}.json").exists():
        raise exception.NotFoundError(f"Image {image.object_id} not found")
    sandbox_id = st.new_id("sb")
    if name:
        st.claim(app.app_id, name, sandbox_id)
    argv, gate_port = st.netns(list(args))
    if gate_port is not None and gate_port in list(encrypted_ports):
        # Modal terminates TLS in front of an encrypted port: so does the fake's edge.
        argv = [sys.executable, "-m", "tests.fakes.tls_edge", "--", *argv]
    run_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
               "PYTHONPATH": str(st.REPO), "PYTHONUNBUFFERED": "1"}
    for secret in secrets or []:
        run_env.update(secret.env)
    run_env.update({k: v for k, v in (env or {}).items() if v is not None})
    rec: dict[str, Any] = {
        "sandbox_id": sandbox_id, "app_id": app.app_id, "name": name or "", "tags": tags or {},
        "created_at": time.time(), "timeout": timeout, "gate_port": gate_port,
        "ports": list(unencrypted_ports), "tls_ports": list(encrypted_ports),
        "image_id": getattr(image, "object_id", None),
        "workdir": workdir, "env_keys": sorted(run_env), "returncode": None,
        "options": {k: v for k, v in other.items() if isinstance(v, str | int | float | list)},
    }
    if st.spawn(rec, argv, run_env, workdir):
        asyncio.get_running_loop().call_later(timeout, st.expire, sandbox_id)
    st.raise_fault("create_lost")
    return _Sandbox(sandbox_id)


class _Stream:
    def __init__(self, sandbox_id: str, suffix: str) -> None:
        self.sandbox_id, self.suffix = sandbox_id, suffix
        self.read = _Fn("StreamReader.read", self._read)

    async def _read(self) -> str:
        # Modal's read() returns at EOF, i.e. when the sandbox ends; state is cross-process,
        # so poll it.
        while True:
            rec = st.record(self.sandbox_id)
            if rec is None or not st.alive(rec):
                break
            await asyncio.sleep(0.05)
        path = st.path("sandboxes", f"{self.sandbox_id}.{self.suffix}")
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
        rec = st.record(self.object_id)
        if rec is None:
            raise exception.NotFoundError(f"Sandbox {self.object_id} not found")
        return rec

    async def _tunnels(
        self, timeout: int = 50  # noqa: ASYNC109 - Modal's keyword
    ) -> dict[int, modal.Tunnel]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self._rec()
            if not st.alive(rec):
                raise exception.SandboxTerminatedError(f"Sandbox {self.object_id} has finished")
            never = st.fault("tunnels") == "never"
            if rec["gate_port"] in rec.get("tls_ports", []):
                edge = None if never else st.published_port(self.object_id, st.EDGE_PORT_LINE)
                if edge:  # the host name the fake's certificate is for
                    return {rec["gate_port"]: modal.Tunnel("localhost", edge, None, None)}
            port = None if never else st.published_port(self.object_id)
            if port and rec["gate_port"] in rec["ports"]:
                return {rec["gate_port"]: modal.Tunnel("127.0.0.1", port, "127.0.0.1", port)}
            await asyncio.sleep(0.02)
        raise exception.SandboxTimeoutError("Timed out waiting for tunnels")

    async def _terminate(self, *, wait: bool = False) -> int | None:
        st.raise_fault("terminate")
        rec = self._rec()
        if st.alive(rec):
            st.kill(rec)
            st.finish(rec, 137)
        return self._rec()["returncode"] if wait else None

    async def _poll(self) -> int | None:
        rec = self._rec()
        return None if st.alive(rec) else rec["returncode"]

    async def _get_tags(self) -> dict[str, str]:
        return self._rec()["tags"]


async def _from_name(app_name: str, name: str, *, environment_name: str | None = None,
                     include_terminated: bool = False, client: Any = None) -> _Sandbox:
    app = st.read_json(st.path("apps", f"{app_name}.json"))
    claim = st.path("names", f"{app['app_id']}__{name}") if app else None
    with contextlib.suppress(OSError):
        if claim is not None:
            rec = st.record(claim.read_text().strip())
            if rec is not None and st.alive(rec):
                return _Sandbox(rec["sandbox_id"])
    raise exception.NotFoundError(f"Sandbox with name '{name}' not found in app '{app_name}'")


async def _from_id(sandbox_id: str, client: Any = None) -> _Sandbox:
    sb = _Sandbox(sandbox_id)
    sb._rec()
    return sb


async def _list(*, app_id: str | None = None, tags: dict[str, str] | None = None,
                client: Any = None):
    st.raise_fault("list")
    for rec in st.records():
        if (app_id is None or rec["app_id"] == app_id) and st.alive(rec) and all(
                rec["tags"].get(k) == v for k, v in (tags or {}).items()):
            yield _Sandbox(rec["sandbox_id"])


# --- test helpers ------------------------------------------------------------------------
def provider_options(**overrides: Any) -> dict[str, Any]:
    """`modal` provider options that select this fake and serve the demo env (fast back-off)."""
    return {"sdk": SDK, "image": "python:3.11-slim", "command": DEMO_COMMAND,
            "backoff_s": 0.01, "backoff_max_s": 0.05, **overrides}


def demo_image() -> _Image:
    """An image *definition* (what `--provider-opt image=py:MOD:ATTR` points at)."""
    return sdk.Image.debian_slim("3.11")


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
