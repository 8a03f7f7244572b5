"""The `local` provider's side of its zygote (providers/zygote.py, the fork server).

`ZygotePool.spawn(argv, env, cwd)` turns a recognised env command into a `ForkedProcess`
forked from a zygote that already imported the env (milliseconds instead of a fresh
interpreter importing hud), or returns None: the caller then starts a plain subprocess,
exactly as without a zygote. A zygote that cannot start, or dies, is never retried for
that command and is never a rollout's failure — one warning, then subprocesses.

One zygote per (command, cwd, environment), so the env module sees at import time the
same environment a fresh subprocess would have seen. The zygote lives in its own
session, holds one end of a socketpair and exits on EOF (the provider closed it or died).
Its children do NOT die with it: like orphaned subprocesses today, they stay in their own
process groups, recorded in the ledger, until destroy or reap kills them — a zygote
crash must not take live rollouts with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from .env_server import ZYGOTE_RECIPES, ZygoteRecipe, start_failure_summary
from .errors import EnvStartError
from .zygote import READY_LINE, ZygoteCommand, proc_gone, recognise

log = logging.getLogger("providers.local")

ZYGOTE_PY = Path(__file__).with_name("zygote.py")
START_TIMEOUT_S = 120.0  # importing hud costs seconds of CPU; on a loaded node, many
FORK_TIMEOUT_S = 10.0  # a fork takes milliseconds: no reply in 10 s = a wedged zygote
MAX_ZYGOTES = 4  # per provider: commands (env names) or environments in use at once
MAX_STARTS = 8  # more = the command or environment changes per sandbox: no zygote pays
LOST_EXIT_CODE = -1  # the zygote died before reaping the child: its exit status is lost


class ZygoteError(Exception):
    """The zygote cannot serve (did not start, died, or refused); fall back."""


class ZygoteEnvError(ZygoteError):
    """The zygote exited with an error while importing the env, as the real command
    would: the env's own failure (its import), not the zygote's."""

    def __init__(self, code: int, lines: list[str]) -> None:
        super().__init__(f"exited with code {code} while loading the env: {_tail(lines)}")
        self.code = code
        self.lines = lines


class ForkedProcess:
    """What the local provider uses of `asyncio.subprocess.Process`, for a zygote's child:
    `pid` (also its process group), `stdout`, `returncode`, `wait()`."""

    def __init__(self, pid: int, start: str | None, stdout: asyncio.StreamReader,
                 transport: asyncio.BaseTransport, pipe_closed: asyncio.Future[None],
                 exited: asyncio.Future[int | None], preload_lines: list[str]) -> None:
        self.pid = pid
        self.stdout = stdout
        # What importing the env printed (in the zygote): a fresh process would have
        # printed it first, so the output tail kept for errors starts with it.
        self.preload_lines = preload_lines
        self._start = start
        self._transport = transport
        self._pipe_closed = pipe_closed
        self._exited = exited
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        if self._code is None and self._exited.done():
            code = self._exited.result()
            if code is not None:
                self._code = code
            elif proc_gone(self.pid, self._start):  # the zygote died: ask the kernel
                self._code = LOST_EXIT_CODE
        return self._code

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        # No zygote left to reap it (nothing to await): poll the kernel until it is gone.
        while self.returncode is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # Our end of its output pipe: normally closed at EOF; a straggler holding the
        # write end (something that left the group) must not keep it open for good.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pipe_closed), 0.5)
        self._transport.close()
        assert self._code is not None
        return self._code


class _PipeProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that says when its pipe is closed (EOF, or closed by us)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


class Zygote:
    """One running zygote: its process, its control socket, the children it forked."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket,
                 output: asyncio.StreamReader, transport: asyncio.BaseTransport,
                 lines: collections.deque[str]) -> None:
        self.process = process
        self.sock = sock
        self.output = output
        self.transport = transport
        self.lines = lines
        self.preload_lines = list(lines)
        self.loop = asyncio.get_running_loop()
        self.dead = False
        self._lock = asyncio.Lock()
        self._waiting: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._reader = asyncio.create_task(self._read_replies())
        self._pump = asyncio.create_task(self._drain_output())

    @classmethod
    async def start(cls, cmd: ZygoteCommand, env: dict[str, str], cwd: str | None,
                    keep_lines: int) -> Zygote:
        ours, theirs = socket.socketpair()
        recipe = ZYGOTE_RECIPES.get(cmd.module, ZygoteRecipe())
        argv = [cmd.python, str(ZYGOTE_PY), f"--fd={theirs.fileno()}", *recipe.argv(), "--",
                "-m", cmd.module, *cmd.module_args]
        try:
            # Popen, not asyncio's subprocess: the zygote may outlive the event loop that
            # started it (a provider dropped without close), and an asyncio subprocess
            # transport cannot be collected after its loop closed.
            process = subprocess.Popen(  # noqa: ASYNC220 - fork+exec, milliseconds
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
                env={**env, **dict(cmd.env_assign)}, pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            raise ZygoteError(f"cannot start {cmd.python!r}: {exc}") from None
        finally:
            theirs.close()
        lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        output = asyncio.StreamReader(limit=1 << 20)
        transport: asyncio.BaseTransport | None = None
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(output), process.stdout)
            info = await asyncio.wait_for(_read_until_ready(output, lines), START_TIMEOUT_S)
        except BaseException as exc:
            ours.close()
            if transport is not None:
                transport.close()
            elif process.stdout is not None:
                process.stdout.close()
            await _kill(process)
            if isinstance(exc, (TimeoutError, ValueError)):
                raise ZygoteError(f"not ready within {START_TIMEOUT_S:.0f}s: {_tail(lines)}") from None
            raise
        if info is None:
            ours.close()
            transport.close()
            code = await _wait(process, 5.0)
            if code == 1:  # the env's import raised (the zygote's own refusals exit 2-4)
                raise ZygoteEnvError(code, list(lines))
            raise ZygoteError(f"exited with code {code} while loading the env: {_tail(lines)}")
        ours.setblocking(False)
        log.debug("zygote %s ready for %s (%s)", process.pid, cmd.env_file, info)
        return cls(process, ours, output, transport, lines)

    @property
    def usable(self) -> bool:
        return not self.dead and self.loop is asyncio.get_running_loop()

    async def spawn(self, limit: int) -> ForkedProcess:
        """Fork one env server; its stdout+stderr come back on a pipe made here."""
        loop = asyncio.get_running_loop()
        async with self._lock:  # one request in flight: replies pair with requests
            if self.dead:
                raise ZygoteError(f"zygote exited: {_tail(self.lines)}")
            read_fd, write_fd = os.pipe()
            pipe = os.fdopen(read_fd, "rb", 0)
            reader = asyncio.StreamReader(limit=limit)
            protocol = _PipeProtocol(reader)
            try:
                transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
            except BaseException:
                # Closing the file object (never the raw fd) is idempotent: a transport
                # made before a cancellation closes the same object again, harmlessly.
                pipe.close()
                os.close(write_fd)
                raise
            # The child waits for a byte on this pipe before it runs anything. It is
            # written only once the child is ours; on every other way out (cancelled,
            # no answer, zygote gone, this process killed) the write end closes and the
            # child exits by itself — whether or not its "forked" answer ever arrives.
            go_r, go_w = os.pipe()
            reply: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiting.append(reply)
            try:
                try:
                    socket.send_fds(self.sock, [b'{"op": "fork"}\n'], [write_fd, go_r])
                except OSError as exc:
                    self._waiting.remove(reply)
                    raise ZygoteError(f"cannot reach the zygote: {exc}") from None
                finally:
                    os.close(write_fd)  # the zygote has its own copies now (or never will)
                    os.close(go_r)
                try:
                    answer = await asyncio.wait_for(asyncio.shield(reply), FORK_TIMEOUT_S)
                except TimeoutError:
                    self.kill()
                    raise ZygoteError(f"no answer to a fork within {FORK_TIMEOUT_S:.0f}s") from None
                if answer.get("op") != "forked":
                    raise ZygoteError(f"fork refused: {answer.get('error')}")
                process = ForkedProcess(answer["pid"], answer.get("start"), reader, transport,
                                        protocol.closed, answer["_exited"], self.preload_lines)
                os.write(go_w, b"g")
            except BaseException:
                transport.close()
                raise
            finally:
                os.close(go_w)
        return process

    async def _read_replies(self) -> None:
        loop = asyncio.get_running_loop()
        buffer = b""
        try:
            while data := await loop.sock_recv(self.sock, 65536):
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._dispatch(json.loads(line))
        except (OSError, ValueError) as exc:
            log.debug("zygote %s: control socket: %r", self.process.pid, exc)
        finally:
            self._mark_dead()

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "exit":
            exited = self._exits.pop(message.get("pid", 0), None)
            if exited is not None and not exited.done():
                exited.set_result(message.get("code"))
            return
        if op == "forked":
            # Registered here, before the next message is read: its exit may be next.
            exited = self._exits[message["pid"]] = self.loop.create_future()
            message["_exited"] = exited
        if self._waiting:
            reply = self._waiting.popleft()
            if not reply.done():
                reply.set_result(message)

    def _mark_dead(self) -> None:
        self.dead = True
        with contextlib.suppress(RuntimeError):  # the loop may be closing
            while self._waiting:
                reply = self._waiting.popleft()
                if not reply.done():
                    reply.set_exception(ZygoteError(f"zygote exited: {_tail(self.lines)}"))
                    reply.exception()  # retrieved: a cancelled spawn may never look
            for exited in self._exits.values():
                if not exited.done():
                    exited.set_result(None)  # unknown: ForkedProcess polls the kernel
            self._exits.clear()

    async def _drain_output(self) -> None:
        # The zygote says little after loading, but a full pipe would block it.
        with contextlib.suppress(ValueError, asyncio.LimitOverrunError):
            while raw := await self.output.readline():
                self.lines.append(raw.decode(errors="replace").rstrip())

    def kill(self) -> None:
        self.dead = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    async def close(self) -> None:
        """EOF on its socket ends the zygote; its children are not touched."""
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()
        if await _wait(self.process, 5.0) is None:
            await _kill(self.process)
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)
        self.transport.close()

    def abandon(self) -> None:
        """Drop a zygote started on another (finished) event loop, without awaiting."""
        self.dead = True
        self.sock.close()  # EOF: it exits by itself; SIGTERM in case it is wedged
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(OSError):
            self.process.stdout.close()  # type: ignore[union-attr]  # its loop is gone


class ZygotePool:
    """The zygotes of one provider instance, started lazily, one per (command, cwd, env)."""

    def __init__(self, keep_lines: int) -> None:
        self.keep_lines = keep_lines
        self._zygotes: dict[str, asyncio.Task[Zygote]] = {}
        self._broken: set[str] = set()
        self._warned = False
        self._starts = 0

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: str | None,
                    limit: int) -> ForkedProcess | None:
        """A forked env server for `argv`, or None: run it as a plain subprocess."""
        cmd = recognise(argv)
        if cmd is None:
            return None
        key = _key(cmd, env, cwd)
        if key in self._broken:
            return None
        try:
            zygote = await self._get(key, cmd, env, cwd)
            return await zygote.spawn(limit)
        except ZygoteEnvError as exc:
            # The same import would fail in a plain subprocess: say so now, and try the
            # zygote again next time (the env file may have been fixed).
            self._zygotes.pop(key, None)
            output = "\n".join(exc.lines)
            raise EnvStartError(f"env server failed to start: {start_failure_summary(output)} "
                                f"(exit code {exc.code})\nlast output:\n{output}") from None
        except ZygoteError as exc:
            self._broken.add(key)
            task = self._zygotes.pop(key, None)
            if task is not None and task.done() and not task.cancelled() and not task.exception():
                await task.result().close()
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "provider 'local': zygote for %s unusable (%s); starting env "
                    "servers as plain subprocesses", cmd.env_file, exc)
            return None

    async def _get(self, key: str, cmd: ZygoteCommand, env: dict[str, str],
                   cwd: str | None) -> Zygote:
        loop = asyncio.get_running_loop()
        task = self._zygotes.get(key)
        if task is not None and task.get_loop() is not loop:
            # Started under an event loop that has since finished (asyncio.run per call).
            self._zygotes.pop(key)
            if task.done() and not task.cancelled() and not task.exception():
                task.result().abandon()
            task = None
        if task is None:
            if self._starts >= MAX_STARTS:
                raise ZygoteError(f"{self._starts} zygotes started already: the command or "
                                  "environment changes per sandbox")
            self._starts += 1
            while len(self._zygotes) >= MAX_ZYGOTES:
                oldest = self._zygotes.pop(next(iter(self._zygotes)))
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await (await oldest).close()
            # A task of its own: one caller's cancellation must not kill a shared start.
            task = asyncio.ensure_future(Zygote.start(cmd, env, cwd, self.keep_lines))
            self._zygotes[key] = task
        try:
            zygote = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # we were cancelled, the start goes on for the others
            raise ZygoteError("zygote start was cancelled") from None
        if not zygote.usable:
            raise ZygoteError(f"zygote exited: {_tail(zygote.lines)}")
        return zygote

    async def close(self) -> None:
        zygotes, self._zygotes = self._zygotes, {}
        for task in zygotes.values():
            if task.get_loop() is not asyncio.get_running_loop():
                if task.done() and not task.cancelled() and not task.exception():
                    task.result().abandon()
                continue
            try:
                zygote = await task
            except (Exception, asyncio.CancelledError):
                continue
            await zygote.close()


def _key(cmd: ZygoteCommand, env: dict[str, str], cwd: str | None) -> str:
    # A digest, so the environment (it may hold credentials) is not kept as a dict key.
    blob = json.dumps([repr(cmd), cwd, sorted(env.items())]).encode()
    return hashlib.sha256(blob).hexdigest()


async def _read_until_ready(output: asyncio.StreamReader,
                            lines: collections.deque[str]) -> dict[str, Any] | None:
    while raw := await output.readline():
        line = raw.decode(errors="replace").rstrip()
        if line.startswith(READY_LINE):
            return json.loads(line[len(READY_LINE):])
        lines.append(line)
    return None


async def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """Exit code, or None if still running after `timeout_s` (polled: it is no asyncio
    child, and it exits within milliseconds of being told to)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (code := process.poll()) is None and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return code


async def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    await _wait(process, 5.0)


def _tail(lines: collections.deque[str]) -> str:
    return " | ".join(list(lines)[-5:]) or "(no output)"


__all__ = ["ForkedProcess", "ZygoteError", "ZygotePool"]
