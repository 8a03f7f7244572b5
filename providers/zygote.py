"""Fork server for the `local` provider: import the env once, fork one env server per rollout.

Started by `providers.local_zygote` with the env command's own python, as
`<python> zygote.py --fd=N [--preload M]... [--prepare M:F] -- -m MODULE ENV_FILE [ARGS]`
(the real command after `--`, so `ps` shows what it serves — as do its children). It
imports the modules its caller names (`--preload`, `--prepare`: data, from
`env_server.ZYGOTE_RECIPES`; this file knows no server's internals but hud's) and loads
the env file (the ≈1.7 CPU-seconds a fresh
`python -m hud.environment.server` pays per rollout), prints `ZYGOTE_READY=<json>` and
then serves fork requests on the inherited socket fd N (newline-delimited JSON):

    -> {"op": "fork"}  + fds (SCM_RIGHTS): the write end of its output pipe, the read
                         end of its "go" pipe
    <- {"op": "forked", "pid": P, "start": T} | {"op": "error", "error": "..."}
    <- {"op": "exit", "pid": P, "code": C, "cpu_s": S}   (asynchronous, per reaped child)

Each child becomes what a fresh subprocess was: its own session and process group
(pgid = pid), stdout+stderr on the pipe, stdin on /dev/null, none of the zygote's fds, a
fresh event loop; it prints `HUD_SERVE_PORT=` and exits the way the real entry point does
(atexit handlers run, exit code kept). It starts only once the provider, having recorded
it, writes a byte to its go pipe: EOF there (the request was cancelled, the answer lost,
the provider died) and it exits at once — no child runs that nobody owns. EOF on the
socket (the provider closed it or died) ends the zygote; its children live on like
orphaned subprocesses (destroy or the ledger's reap ends them).

STANDARD LIBRARY ONLY: this runs under whatever python the env uses (a hud venv without
psutil or pydantic), and it must not import anything from `providers` either.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import importlib.util
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

READY_LINE = "ZYGOTE_READY="
MODULES = {"hud_ray.envkit": "envkit", "hud.environment.server": "hud"}


@dataclass(frozen=True)
class ZygoteCommand:
    """A command the zygote can stand in for (what `recognise` understood of it)."""

    kind: str  # "envkit" | "hud"
    python: str
    module: str
    module_args: tuple[str, ...]
    env_file: str
    env_name: str | None
    host: str
    env_assign: tuple[tuple[str, str], ...]  # from an `env A=1 B= python ...` prefix


def recognise(argv: list[str]) -> ZygoteCommand | None:
    """`[env A=B ...] <python> -m hud_ray.envkit|hud.environment.server FILE [--env N]
    [--host H] [--port 0]` -> what the zygote needs; anything else -> None (a plain
    subprocess runs it, exactly as written)."""
    i, assign = 0, []
    if argv and os.path.basename(argv[0]) == "env":
        i = 1
        while i < len(argv) and "=" in argv[i] and not argv[i].startswith(("-", "=")):
            key, _, value = argv[i].partition("=")
            assign.append((key, value))
            i += 1
    if len(argv) >= i + 3 and os.path.basename(argv[i]) == "hud" and argv[i + 1] == "serve":
        hud_serve = _hud_serve_as_module(argv[i], argv[i + 2:])
        if hud_serve is None:
            return None
        python, rest = hud_serve
        module = "hud.environment.server"
    elif len(argv) < i + 4 or argv[i + 1] != "-m" or argv[i + 2] not in MODULES:
        return None
    else:
        python, module, rest = argv[i], argv[i + 2], argv[i + 3 :]
    env_file, values = None, {"--env": None, "--host": "127.0.0.1", "--port": "0"}
    j = 0
    while j < len(rest):
        arg = rest[j]
        name, eq, value = arg.partition("=")
        if name in values and eq:
            values[name] = value
        elif arg in values and j + 1 < len(rest):
            values[arg] = rest[j + 1]
            j += 1
        elif not arg.startswith("-") and env_file is None:
            env_file = arg
        else:
            return None  # an option we do not know: the real command decides what it means
        j += 1
    if env_file is None or values["--port"] != "0":
        return None  # a fixed port cannot be shared by concurrent sandboxes anyway
    return ZygoteCommand(MODULES[module], python, module, tuple(rest), env_file, values["--env"],
                         values["--host"] or "127.0.0.1", tuple(assign))


def _hud_serve_as_module(script: str, args: list[str]) -> tuple[str, list[str]] | None:
    """`hud serve FILE[:NAME] [--host H] [-p|--port P]` as the `python -m
    hud.environment.server` arguments it amounts to, with the python that runs the `hud`
    script (its shebang); None for anything else (a factory `--arg`, `-v`, no file)."""
    import shutil

    path = shutil.which(script)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            first = f.readline().decode(errors="replace").strip()
    except OSError:
        return None
    python = first[2:].split()[0] if first.startswith("#!") and first[2:].strip() else ""
    if not python or os.path.basename(python) in ("env", "sh", "bash"):
        return None
    target: list[str] = []
    options: list[str] = []
    j = 0
    while j < len(args):
        arg = args[j]
        if arg in ("-p", "--port", "--host") and j + 1 < len(args):
            options += ["--port" if arg == "-p" else arg, args[j + 1]]
            j += 1
        elif arg.startswith(("--port=", "--host=")):
            options.append(arg)
        elif not arg.startswith("-") and not target:
            file, _, name = arg.partition(":")
            target = [file, *(["--env", name] if name else [])]
        else:
            return None
        j += 1
    if not target:
        return None
    return python, [*target, *options]


# --- the server (runs in the env's python) -------------------------------------------------


def _preload(cmd: ZygoteCommand, preload: list[str], prepare: str | None) -> Callable[[], object]:
    """Import what the caller named (`preload`: data, so this file knows no server's
    internals but hud's), load the env; returns the call a forked child serves with."""
    for name in preload:
        importlib.import_module(name)
    if prepare:
        module, _, function = prepare.partition(":")
        return getattr(importlib.import_module(module), function)(
            cmd.env_file, cmd.env_name, cmd.host)
    if cmd.kind != "hud":
        raise Declined(f"no --prepare given for {cmd.module}")
    server = importlib.import_module("hud.environment.server")
    from hud.environment import load_environment
    from hud.utils.process import run_until_terminated

    env = load_environment(cmd.env_file, name=cmd.env_name)
    if getattr(env, "_workspaces", None):
        # A workspace's directory is made when the env file is imported (hud's scaffold:
        # `tempfile.mkdtemp()` at module level): forked children would all share the
        # zygote's one directory. A fresh process per sandbox gets its own.
        raise Declined("the env has a workspace, whose directory is created at import")
    # hud's own entry point: SIGTERM cancels serving and exits 143.
    return lambda: run_until_terminated(server.serve(env, cmd.host, 0))


class Declined(Exception):
    """This env must not be forked from one import (the provider runs it plainly)."""


EXIT_DECLINED = 4


def proc_state(pid: int) -> tuple[str, str] | None:
    """(state letter, kernel start time) from /proc/PID/stat, None if there is no such
    process (or no /proc). The start time tells a recycled PID apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), fields[19].decode()
    except (OSError, IndexError):
        return None


def proc_gone(pid: int, start: str | None) -> bool:
    """True once `pid` has exited (a zombie counts) or now names another process."""
    state = proc_state(pid)
    if state is not None:
        return state[0] in "ZX" or (start is not None and state[1] != start)
    if os.path.isdir("/proc"):
        return True
    try:
        os.kill(pid, 0)  # no /proc (macOS): existence is all we can ask
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


class ForkServer:
    def __init__(self, ctrl: socket.socket, serve: Callable[[], object]) -> None:
        self.ctrl = ctrl
        self.serve = serve
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.buffer = b""
        self.fds: list[int] = []

    def send(self, message: dict[str, object]) -> None:
        try:
            self.ctrl.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the provider is gone: the next read sees EOF and we exit

    def run(self) -> None:
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        # SIGCHLD only wakes the loop; children are reaped there, never inside a handler.
        signal.set_wakeup_fd(self.wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self.ctrl, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.reap()  # a child could not have exited yet, but reaping is cheap and safe
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.wake_r:
                    while True:
                        try:
                            if not self.wake_r.recv(4096):
                                break
                        except BlockingIOError:
                            break
                    self.reap()
                elif not self.receive():
                    return

    def receive(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctrl, 65536, 64)
        except InterruptedError:
            return True
        except OSError:
            return False
        self.fds.extend(fds)
        if not data:
            return False  # EOF: the provider closed the socket or died
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
            except ValueError:
                self.send({"op": "error", "error": f"bad request {line[:80]!r}"})
                continue
            if request.get("op") != "fork" or len(self.fds) < 2:
                self.send({"op": "error", "error": f"bad request {request!r} (need 2 fds)"})
                continue
            pipe_w, go_r = self.fds.pop(0), self.fds.pop(0)
            self.fork(pipe_w, go_r)
        return True

    def fork(self, pipe_w: int, go_r: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child inherits (and repeats) our buffered output
        # Answered only once the child leads its own group: a destroy right after the
        # answer must find the group it signals (the child alone can setsid).
        grouped_r, grouped_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (pipe_w, go_r, grouped_r, grouped_w):
                os.close(fd)
            self.send({"op": "error", "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            os.close(grouped_r)
            self.child(pipe_w, go_r, grouped_w)  # never returns
        for fd in (pipe_w, go_r, grouped_w):
            os.close(fd)
        os.read(grouped_r, 1)  # a byte, or EOF if it died first: either way, done
        os.close(grouped_r)
        state = proc_state(pid)  # not reaped before we reap it: this is our child's
        self.send({"op": "forked", "pid": pid, "start": state[1] if state else None})

    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.send({"op": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status),
                       "cpu_s": round(usage.ru_utime + usage.ru_stime, 4)})

    def child(self, pipe_w: int, go_r: int, grouped_w: int) -> None:
        code = 70  # EX_SOFTWARE: only if setting the child up failed
        try:
            os.setsid()  # own session and process group (pgid = pid), like start_new_session
            os.write(grouped_w, b"s")
            os.close(grouped_w)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.selector.close()
            for sock in (self.ctrl, self.wake_r, self.wake_w):
                sock.close()
            for fd in self.fds:
                os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(pipe_w, 1)
            os.dup2(pipe_w, 2)
            for fd in (null, pipe_w):
                os.close(fd)
            if not os.read(go_r, 1):
                code = 0  # never taken on by the provider: nobody would own this sandbox
                return
            os.close(go_r)
            _reseed()
            code = _run_as_main(self.serve)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)


def _reseed() -> None:
    """Fresh processes draw fresh seeds; forked ones would share the zygote's RNG state.
    (`random` reseeds itself after fork; numpy's global state does not.)"""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:
            pass


def _run_as_main(serve: Callable[[], object]) -> int:
    """Run like `python -m <module>`: the exit code of SystemExit or a return value, a
    traceback and 1 for an exception, non-daemon threads joined, atexit handlers run
    (hud flushes telemetry there). The caller os._exit()s: the zygote's frames below us
    must never run in a child."""
    try:
        result = serve()
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # like CPython: die of the signal
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    _finish()
    return code


def _finish() -> None:
    shutdown = getattr(threading, "_shutdown", None)
    try:
        if shutdown is not None:
            shutdown()  # what interpreter exit does first: join non-daemon threads
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zygote.py", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited control socket")
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE",
                        help="import before the env (shared by every fork); repeatable")
    parser.add_argument("--prepare", default=None, metavar="MODULE:FUNCTION",
                        help="FUNCTION(env_file, env_name, host) loads the env and returns "
                        "the call a child serves with (default: hud's own server)")
    parser.add_argument("command", nargs="+", help="-m MODULE ARGS: the command to stand in for")
    args = parser.parse_args(argv)
    ctrl = socket.socket(fileno=args.fd)
    cmd = recognise([sys.executable, *args.command])
    if cmd is None:
        print(f"zygote: cannot serve {args.command}", flush=True)
        return 2
    # Look like `python -m <module> ARGS` to the env: sys.path[0] is the working directory
    # (not this file's), sys.argv[0] the module's file.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = os.getcwd()
    spec = importlib.util.find_spec(cmd.module)
    if spec is not None and spec.submodule_search_locations is not None:  # a package: -m runs
        spec = importlib.util.find_spec(cmd.module + ".__main__")  # its __main__, as python does
    sys.argv = [spec.origin if spec and spec.origin else cmd.module, *cmd.module_args]
    cpu = time.process_time()
    try:
        serve = _preload(cmd, args.preload, args.prepare)  # another exception: traceback on stdout, exit 1 (the env's)
    except Declined as exc:
        print(f"zygote: declining to fork this env: {exc}", flush=True)
        return EXIT_DECLINED
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        # A forked child gets only the forking thread: locks those threads hold stay held.
        print(f"zygote: refusing to fork: threads running after loading the env: {threads}",
              flush=True)
        return 3
    # Everything loaded so far is shared copy-on-write with every child; a collection in
    # a child would touch (and so copy) all of it. Frozen objects are never scanned.
    gc.collect()
    gc.freeze()
    info = {"pid": os.getpid(), "preload_cpu_s": round(time.process_time() - cpu, 3),
            "native_threads": _native_threads() - 1}
    print(READY_LINE + json.dumps(info), flush=True)
    ForkServer(ctrl, serve).run()
    # Not a normal exit: the atexit handlers the env's imports registered belong to the
    # sandboxes (each child runs them); the zygote itself never served.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
