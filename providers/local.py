"""`local`: one env-server subprocess per rollout on 127.0.0.1 (the embedded default).

Each sandbox is a fresh process in its own process group (signalled as a group: `sh -c`
under dash forks rather than execs, so signalling one PID can miss the server). Every
process is written to an on-disk ledger *before* it is awaited, so `reap` finds what a
killed driver or worker left behind — checked against the process start time, so a
recycled PID is never killed by mistake.

For envkit's and hud's own server commands the process is forked from a zygote that has
already imported the env (`local_zygote.py`, option `zygote`): milliseconds instead of a
fresh interpreter's imports, same isolation (own session and group, same ledger).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .base import Capabilities, Endpoint, Provider, SandboxHandle, SandboxSpec
from .env_server import COMMANDS, ServerKind, detect_server, start_failure_summary
from .errors import CreateError, EnvStartError, NotReadyError, ProviderConfigError
from .local_zygote import ForkedProcess, ZygotePool

PORT_LINE = "HUD_SERVE_PORT="
MARKER_ENV = "HUD_RAY_SANDBOX"
DEFAULT_COMMAND = COMMANDS["envkit"]


def default_state_dir() -> Path:
    base = os.environ.get("HUD_RAY_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "hud_ray"
    )
    return Path(base) / "local"


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_file: str | None = Field(None, description="env file the command serves")
    server: Literal["auto", "hud", "envkit"] = Field(
        "auto", description="which server serves env_file when no command is given: hud's "
        "own (python -m hud.environment.server) or envkit; auto = hud when the file imports hud")
    command: str | None = Field(
        None, description="placeholders: {python} {env_file} {env_name}; default: the "
        "server's own command (see `server`)")
    cwd: str | None = None
    state_dir: str | None = None
    kill_grace_s: float = 2.0
    output_lines: int = 40
    zygote: bool = Field(
        True, description="fork env servers from a process that already imported the env "
        "(envkit or hud's server commands only; anything else runs as a plain subprocess)")


class _Proc:
    """Runtime state of one env process owned by this provider instance."""

    def __init__(
        self, process: asyncio.subprocess.Process | ForkedProcess, keep_lines: int,
        handle: SandboxHandle,
    ) -> None:
        self.process = process
        self.handle = handle
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.lines.extend(getattr(process, "preload_lines", ()))  # printed in the zygote
        self.port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pump = asyncio.create_task(self._read_output())

    async def _read_output(self) -> None:
        assert self.process.stdout is not None
        # Keep draining after the port line: a full pipe would block the env server.
        while True:
            try:
                raw = await self.process.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # an over-long output line: skip it
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if not self.port.done() and line.startswith(PORT_LINE):
                value = line[len(PORT_LINE) :].strip()
                if value.isdigit():
                    self.port.set_result(int(value))
        if not self.port.done():
            self.port.set_exception(EOFError("output closed"))
            self.port.exception()

    def tail(self) -> str:
        return "\n".join(self.lines) or "(no output)"


class LocalProvider(Provider):
    name = "local"
    Options = LocalOptions
    default_create_rate = 50.0
    default_live_cap = 512
    capabilities = Capabilities(images=False, resources=set(), gpu=False, warm_ahead=True)
    sweep_all_on_start = True  # the ledger is a directory on this host

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options: LocalOptions
        self.state_dir = Path(self.options.state_dir) if self.options.state_dir else default_state_dir()
        self._procs: dict[str, _Proc] = {}
        self._zygotes = ZygotePool(self.options.output_lines)

    def server_kind(self) -> ServerKind:
        """The server the default command runs (`server`, else read from env_file)."""
        opts = self.options
        if opts.server != "auto":
            return opts.server
        return detect_server(opts.env_file) if opts.env_file else "envkit"

    @property
    def command(self) -> str:
        return self.options.command or COMMANDS[self.server_kind()]

    def check_config(self) -> None:
        opts = self.options
        if "{env_file}" in self.command and not opts.env_file:
            raise ProviderConfigError(
                "provider 'local': option env_file is required (--provider-opt env_file=PATH)"
            )
        if opts.env_file and not os.path.isfile(opts.env_file):
            raise ProviderConfigError(f"provider 'local': env_file {opts.env_file!r} not found")
        if opts.command is None and self.server_kind() == "hud":
            _require_hud(opts.env_file)

    # --- lifecycle -----------------------------------------------------------------
    def argv(self, spec: SandboxSpec) -> list[str]:
        opts = self.options
        self.check_config()  # where the process starts, the file must be there too
        env_file = os.path.abspath(opts.env_file) if opts.env_file else ""
        try:
            text = self.command.format(
                python=shlex.quote(sys.executable),
                env_file=shlex.quote(env_file),
                env_name=shlex.quote(spec.env_name or ""),
            )
            argv = shlex.split(text)
        except (KeyError, IndexError, ValueError) as exc:
            raise ProviderConfigError(
                f"provider 'local': option command {self.command!r} is invalid ({exc!r}); "
                "placeholders are {python} {env_file} {env_name}"
            ) from None
        if not argv:
            raise ProviderConfigError("provider 'local': option command is empty")
        return argv

    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        argv = self.argv(spec)
        existing = self._procs.get(spec.name)
        if existing is not None:
            # Same deterministic name = a retried create: find the sandbox, never spawn a
            # second process under one id (the first would be orphaned, ledger and all).
            if existing.process.returncode is None and existing.handle.labels == labels:
                return existing.handle
            await self.destroy(existing.handle)
        handle = SandboxHandle(provider=self.name, sandbox_id=spec.name, name=spec.name, labels=labels)
        # The marker lets `reap` find a process whose pid never reached the ledger (an
        # owner killed between the spawn or fork and the ledger update).
        env = {**os.environ, **spec.env_vars, "PYTHONUNBUFFERED": "1", MARKER_ENV: spec.name}
        self._forget_no_live_owner(spec.name)
        self._write_ledger(handle)
        try:
            process: asyncio.subprocess.Process | ForkedProcess | None = None
            if self.options.zygote:  # None when the command is not one a zygote can fork
                # Zygotes are shared per environment: the per-sandbox marker stays out.
                shared_env = {k: v for k, v in env.items() if k != MARKER_ENV}
                process = await self._zygotes.spawn(argv, shared_env, self.options.cwd, 1 << 20)
            process = process or await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                cwd=self.options.cwd,
                env=env,
                limit=1 << 20,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            # Retrying cannot help a command that does not exist: a config error (fatal).
            self._drop_ledger(handle.sandbox_id)
            if self.options.cwd and exc.filename == self.options.cwd:
                what = f"option cwd: {self.options.cwd!r}"
            else:
                what = f"option command: cannot run {argv[0]!r}"
            raise ProviderConfigError(f"provider 'local': {what}: {exc.strerror}") from None
        except OSError as exc:
            self._drop_ledger(handle.sandbox_id)
            raise CreateError(f"provider 'local': cannot start {argv[0]!r}: {exc}") from None
        except BaseException:
            # Cancelled while spawning: asyncio kills the half-made process; drop its entry.
            self._drop_ledger(handle.sandbox_id)
            raise
        handle.data.update(pid=process.pid, pgid=process.pid, started=_start_time(process.pid))
        self._write_ledger(handle)
        self._procs[handle.sandbox_id] = _Proc(process, self.options.output_lines, handle)
        return handle

    async def ready(self, handle: SandboxHandle, timeout_s: float) -> Endpoint:
        proc = self._procs.get(handle.sandbox_id)
        if proc is None:
            raise NotReadyError(f"sandbox {handle.sandbox_id} is not owned by this provider")
        try:
            port = await asyncio.wait_for(asyncio.shield(proc.port), timeout_s)
        except TimeoutError:
            if proc.process.returncode is None:
                # Alive, yet not serving after the whole startup budget: the env's own
                # start-up (an initialize hook that hangs), not the machine.
                raise EnvStartError(
                    f"env did not start serving (print {PORT_LINE}<port>) within "
                    f"{timeout_s:.1f}s; last output:\n{proc.tail()}") from None
            raise NotReadyError(f"env exited with code {proc.process.returncode} before "
                                f"printing its port; last output:\n{proc.tail()}") from None
        except EOFError:
            code = await proc.process.wait()
            if code is not None and code > 0:
                # It exited by itself (a signal gives a negative code): its own failure.
                raise EnvStartError(
                    f"env server failed to start: {start_failure_summary(proc.tail())} "
                    f"(exit code {code})\nlast output:\n{proc.tail()}") from None
            raise NotReadyError(
                f"env exited with code {code} before printing its port; last output:\n{proc.tail()}"
            ) from None
        return Endpoint(url=f"tcp://127.0.0.1:{port}")

    async def destroy(self, handle: SandboxHandle) -> None:
        proc = self._procs.pop(handle.sandbox_id, None)
        if proc is not None:
            await self._stop_group(proc.process)
            proc.pump.cancel()
        else:
            entry = self._read_ledger(handle.sandbox_id) or handle.model_dump()
            _kill_group_if_ours(entry.get("data", {}), handle.sandbox_id)
        self._drop_ledger(handle.sandbox_id)

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        found = []
        for entry in self._ledger_entries():
            if not all(entry.get("labels", {}).get(k) == v for k, v in labels.items()):
                continue
            if _is_ours_alive(entry.get("data", {})) or "pid" not in entry.get("data", {}):
                found.append(SandboxHandle.model_validate(entry))
        return found

    async def diagnostics(self, handle: SandboxHandle) -> str:
        proc = self._procs.get(handle.sandbox_id)
        if proc is None:
            return ""
        # A client sees a dead env's socket close before our pipe reader has drained its
        # last words (usually the reason it died): give the reader a moment to hit EOF.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.pump), 0.5)
        return proc.tail()

    async def reap(self, labels: dict[str, str]) -> list[SandboxHandle]:
        """Destroy live leftovers carrying `labels`; forget entries whose process is gone."""
        found = await super().reap(labels)
        for entry in self._ledger_entries():
            data = entry.get("data", {})
            if (all(entry.get("labels", {}).get(k) == v for k, v in labels.items())
                    and "pid" in data and not _is_ours_alive(data)):
                self._drop_ledger(str(entry.get("sandbox_id")))
        return found

    def alive_pids(self) -> list[int]:
        """PIDs of env processes this instance still owns (tests check these)."""
        return [p.process.pid for p in self._procs.values() if p.process.returncode is None]

    async def close(self) -> None:
        for sandbox_id in list(self._procs):
            proc = self._procs.pop(sandbox_id)
            await self._stop_group(proc.process)
            proc.pump.cancel()
            self._drop_ledger(sandbox_id)
        await self._zygotes.close()  # after the envs: their exits are reported through it

    # --- processes -----------------------------------------------------------------
    async def _stop_group(self, process: asyncio.subprocess.Process | ForkedProcess) -> None:
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.options.kill_grace_s)
            except TimeoutError:
                pass
        # The leader may be gone while children of its group live on: always SIGKILL it.
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 5.0)

    # --- ledger --------------------------------------------------------------------
    def _forget_no_live_owner(self, sandbox_id: str) -> None:
        """A ledger file about to be rewritten may name a process another owner started
        under the same name: destroy that process first, never just forget it."""
        stale = self._read_ledger(sandbox_id)
        if stale is not None:
            _kill_group_if_ours(stale.get("data", {}), sandbox_id)

    def _ledger_path(self, sandbox_id: str) -> Path:
        return self.state_dir / f"{sandbox_id}.json"

    def _write_ledger(self, handle: SandboxHandle) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self._ledger_path(handle.sandbox_id)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(handle.model_dump_json())
        os.replace(tmp, path)

    def _read_ledger(self, sandbox_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._ledger_path(sandbox_id).read_text())
        except (OSError, ValueError):
            return None

    def _drop_ledger(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._ledger_path(sandbox_id).unlink()

    def _ledger_entries(self) -> list[dict[str, Any]]:
        entries = []
        if not self.state_dir.is_dir():
            return entries
        for path in self.state_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                entries.append(json.loads(path.read_text()))
        return entries


def _require_hud(env_file: str | None) -> None:
    """A hud env file needs hud in this interpreter: say so before any sandbox starts."""
    import importlib.util

    if importlib.util.find_spec("hud") is None:
        raise ProviderConfigError(
            f"provider 'local': env_file {env_file!r} is a hud env (it imports hud) and is "
            "served by hud's own server, but hud is not installed here: "
            "pip install 'hud-ray[hud]' (or --provider-opt server=envkit for an envkit env)")


def _create_time(pid: int) -> float | None:
    """The process's start time, None if it is gone (or unknowable).

    psutil (a hud_ray dependency) is imported here, not at the top, so `providers.local`
    also runs inside hud's own venv, which lacks it; there the ledger has no start time
    and `reap` cannot tell a recycled PID from ours (it then trusts the PID)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _start_time(pid: int) -> float | None:
    return _create_time(pid)


def _is_ours_alive(data: dict[str, Any]) -> bool:
    pid, started = data.get("pid"), data.get("started")
    if not pid:
        return False
    created = _create_time(pid)
    if created is None:
        return _group_alive(data.get("pgid") or pid)
    return started is None or abs(created - started) < 0.01


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _kill_by_marker(name: str) -> None:
    """Kill the process group of whatever carries MARKER_ENV=name (no pid was recorded)."""
    import psutil

    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARKER_ENV) == name:
                _signal_group(os.getpgid(proc.pid), signal.SIGKILL)


def _kill_group_if_ours(data: dict[str, Any], name: str = "") -> None:
    pid = data.get("pid")
    if not pid:
        if name:
            _kill_by_marker(name)
        return
    started, created = data.get("started"), _create_time(pid)
    # A gone leader still matches: its group (same id) may hold children.
    leader_matches = started is None or created is None or abs(created - started) < 0.01
    if leader_matches:
        _signal_group(data.get("pgid") or pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
