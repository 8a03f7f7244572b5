"""providers.local's zygote: env servers forked from a process that already imported the env.

Real processes throughout: each sandbox must still be a process of its own, in its own
process group, gone after destroy; a dead zygote means plain subprocesses, never a failed
rollout; the ledger reaps zygote children exactly like subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from hud_ray.agents import Session, resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, Task, expand, iter_tasks
from hud_ray.wire import EnvClient
from providers import LABEL_RUN, SandboxHandle, SandboxSpec, sandbox_name
from providers.env_server import ZYGOTE_RECIPES
from providers.local import LocalProvider
from providers.local_zygote import ForkedProcess
from providers.zygote import EXIT_DECLINED, recognise

from ..fakes.procs import (
    DEMO_ENV,
    DEMO_TASKS,
    ENVS,
    REPO,
    alive,
    async_wait_until,
    wait_gone,
    wait_until,
)

PY = sys.executable


@pytest.fixture(autouse=True)
def _nothing_left_behind(_isolated_state: Path):
    """Fails a test that leaves a process behind (its zygote or any env server) — and
    kills what it left, so one failure does not litter the machine. Everything a test
    starts inherits its HUD_RAY_STATE_DIR, which is how they are found."""
    yield

    def leftovers() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["environ"]):
            with contextlib.suppress(psutil.Error):
                mine = (proc.info["environ"] or {}).get("HUD_RAY_STATE_DIR") == str(_isolated_state)
                if mine and proc.pid != os.getpid() and alive(proc.pid):
                    found.append(proc)
        return found

    gc.collect()  # a dropped provider's zygote exits once its socket is collected
    try:
        wait_until(lambda: not leftovers(), 10, "the test's processes to be gone")
    finally:
        for proc in leftovers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


GONE_FORKED = -1  # the parent of a forked env that was gone before it could be asked


class Recording(LocalProvider):
    """The real local provider; it also remembers each env server's PID and parent PID."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.pids: list[int] = []
        self.parents: list[int] = []

    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        handle = await super().create(spec, labels)
        self.pids.append(handle.data["pid"])
        try:
            self.parents.append(psutil.Process(handle.data["pid"]).ppid())
        except psutil.NoSuchProcess:  # exited and reaped already (an env that fails at once)
            forked = isinstance(self._procs[handle.sandbox_id].process, ForkedProcess)
            self.parents.append(GONE_FORKED if forked else os.getpid())
        return handle


def spec(key: str) -> SandboxSpec:
    return SandboxSpec(name=sandbox_name("zy", key, 1))


def demo_rollouts(n: int) -> list[Rollout]:
    """The first `n` demo rollouts the rule agent solves (kv_lookup ones use a tunnel)."""
    solvable = (r for r in expand(iter_tasks(DEMO_TASKS)) if r.task.id != "riddle")
    return list(itertools.islice(solvable, n))


async def hello(url: str) -> str:
    client = await EnvClient.connect(url, ready_timeout_s=10, heartbeat_s=None)
    name = client.env_info["name"]
    await client.bye()
    return name


def zygote_of(provider: LocalProvider) -> psutil.Process:
    """The provider's one zygote: the parent of its sandboxes, a child of this process."""
    [parent] = {psutil.Process(pid).ppid() for pid in provider.alive_pids()}
    zygote = psutil.Process(parent)
    assert zygote.ppid() == os.getpid() and "providers/zygote.py" in " ".join(zygote.cmdline())
    return zygote


def open_files(pid: int) -> set[str]:
    """The sockets and pipes the process's fds point at ('socket:[123]', 'pipe:[456]').
    A live process opens and closes files (imports) while we list: a vanished fd is skipped."""
    links = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            links.add(os.readlink(fd))
    return {link for link in links if link.startswith(("socket:", "pipe:"))}


# --- which commands a zygote stands in for ---------------------------------------------


def test_recognised_commands_and_everything_else_runs_as_written():
    envkit = recognise([PY, "-m", "hud_ray.envkit", "/e.py", "--host", "127.0.0.1", "--port", "0"])
    assert envkit and (envkit.kind, envkit.env_file, envkit.env_name) == ("envkit", "/e.py", None)
    hud = recognise(["env", "HUD_API_KEY=", "A=b=c", "/v/bin/python", "-m", "hud.environment.server",
                     "/e.py", "--env=probe", "--port", "0"])
    assert hud and (hud.kind, hud.python, hud.env_name) == ("hud", "/v/bin/python", "probe")
    assert hud.env_assign == (("HUD_API_KEY", ""), ("A", "b=c"))
    for argv in (
        ["sh", "-c", f"{PY} -m hud_ray.envkit /e.py --port 0"],  # a shell decides
        [PY, "-m", "hud_ray.envkit", "/e.py", "--port", "8000"],  # a fixed port
        [PY, "-m", "hud_ray.envkit", "/e.py", "--reload"],  # an option we do not know
        [PY, "-u", "-m", "hud_ray.envkit", "/e.py"],  # interpreter flags
        [PY, "-m", "other.server", "/e.py"],
        ["env", "-i", PY, "-m", "hud_ray.envkit", "/e.py"],
        [PY, "-m", "hud_ray.envkit"],  # no env file
    ):
        assert recognise(argv) is None, argv


# --- envkit ---------------------------------------------------------------------------------


def test_twenty_concurrent_rollouts_each_get_a_forked_process_of_their_own(tmp_path):
    provider = Recording(env_file=str(DEMO_ENV), state_dir=str(tmp_path))
    rollouts = demo_rollouts(20)

    async def main():
        agent = resolve_agent("rule")
        config = RolloutConfig(run_id="zy20", deadline_s=60)
        rows = await asyncio.gather(*(run_rollout(r, agent, provider, config) for r in rollouts))
        await provider.close()
        return rows

    rows = asyncio.run(main())
    assert [(r.status, r.reward) for r in rows] == [(Status.OK, 1.0)] * 20, \
        [r.error_message for r in rows if r.status is not Status.OK]
    assert {r.template_id for r in rows} >= {"count", "kv_lookup"}
    assert len(set(provider.pids)) == 20
    # all forked by one zygote (a child of ours), none spawned by us
    assert len(set(provider.parents)) == 1 and provider.parents[0] != os.getpid()
    wait_gone(provider.pids, timeout_s=15)
    wait_gone(provider.parents, timeout_s=10)  # close() ended the zygote too
    assert not list(tmp_path.glob("*.json"))


WITH_HELPER = textwrap.dedent("""
    import subprocess
    from hud_ray.envkit import Environment

    env = Environment("with-helper")

    @env.on_start
    async def start_helper() -> None:
        helper = subprocess.Popen(["sleep", "60"])  # in the env server's process group
        print(f"HELPER={helper.pid}", flush=True)

    @env.template(id="noop")
    async def noop():
        yield "nothing"
        yield 1.0
""")


def test_each_forked_sandbox_is_its_own_session_and_group_and_destroy_kills_the_group(tmp_path):
    env_file = tmp_path / "with_helper.py"
    env_file.write_text(WITH_HELPER)
    provider = LocalProvider(env_file=str(env_file), state_dir=str(tmp_path), kill_grace_s=1.0)

    async def main():
        handles = [await provider.create(spec(f"g{i}"), {LABEL_RUN: "g"}) for i in range(3)]
        for handle in handles:
            assert await hello((await provider.ready(handle, 20)).url) == "with-helper"
        pids = [h.data["pid"] for h in handles]
        zygote = zygote_of(provider)
        for pid in pids:
            assert os.getpgid(pid) == pid and os.getsid(pid) == pid
            assert psutil.Process(pid).ppid() == zygote.pid
            # none of the zygote's sockets or pipes leaked into the sandbox
            assert not open_files(pid) & open_files(zygote.pid)
        # the env's own child is in its group: destroy kills it too
        tail = await provider.diagnostics(handles[0])
        helper = int(next(line for line in tail.splitlines() if line.startswith("HELPER="))[7:])
        assert os.getpgid(helper) == pids[0]
        await provider.destroy(handles[0])
        await async_wait_until(lambda: not alive(helper), 10, "the env's helper to be killed")
        assert all(alive(p) for p in pids[1:]) and zygote.is_running()
        await provider.close()
        return pids, zygote.pid

    pids, zygote_pid = asyncio.run(main())
    wait_gone([*pids, zygote_pid])


def test_a_killed_zygote_means_plain_subprocesses_and_live_sandboxes_carry_on(tmp_path, caplog):
    provider = Recording(env_file=str(DEMO_ENV), state_dir=str(tmp_path), kill_grace_s=1.0)
    caplog.set_level(logging.WARNING, logger="providers.local")

    async def main():
        first = await provider.create(spec("before"), {LABEL_RUN: "k"})
        url = (await provider.ready(first, 20)).url
        zygote = zygote_of(provider)
        zygote.kill()
        zygote.wait(10)
        assert await hello(url) == "demo"  # the forked sandbox outlives its zygote
        agent, config = resolve_agent("rule"), RolloutConfig(run_id="after", deadline_s=60)
        rows = await asyncio.gather(*(run_rollout(r, agent, provider, config)
                                      for r in demo_rollouts(3)))
        await provider.destroy(first)  # no zygote to report its exit: polled instead
        assert not alive(first.data["pid"])
        await provider.close()
        return rows, zygote.pid

    rows, zygote_pid = asyncio.run(main())
    assert [r.status for r in rows] == [Status.OK] * 3, [r.error_message for r in rows]
    assert provider.parents[0] == zygote_pid
    assert provider.parents[1:] == [os.getpid()] * 3  # plain subprocesses from now on
    warnings = [r for r in caplog.records if "zygote" in r.getMessage()]
    assert len(warnings) == 1 and "plain subprocesses" in warnings[0].getMessage()
    wait_gone(provider.pids)


def test_a_create_cancelled_at_any_point_leaves_no_forked_process_behind(tmp_path):
    provider = LocalProvider(env_file=str(DEMO_ENV), state_dir=str(tmp_path))

    loop_errors: list[dict[str, Any]] = []

    async def main():
        # e.g. a pipe closed twice shows up only here ("Exception in callback ...")
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        kept = await provider.create(spec("kept"), {LABEL_RUN: "c"})  # the zygote is up
        zygote = zygote_of(provider)
        for steps in range(12):  # cancel after 0, 1, 2 ... loop iterations of the create
            task = asyncio.create_task(provider.create(spec(f"c{steps}"), {LABEL_RUN: "c"}))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await provider.destroy(await task)  # finished before the cancel landed
            except asyncio.CancelledError:
                pass
        await async_wait_until(lambda: [c.pid for c in zygote.children()] == [kept.data["pid"]],
                               10, "only the kept sandbox to remain")
        assert [p.name for p in tmp_path.glob("*.json")] == [f"{kept.sandbox_id}.json"]
        await provider.close()
        return kept.data["pid"], zygote.pid

    wait_gone(asyncio.run(main()))
    assert not loop_errors, loop_errors


def serving(env_file: Path) -> list[int]:
    """Every live process whose command line names `env_file` (zygote and children)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(env_file) in (proc.info["cmdline"] or []) and alive(proc.pid):
            found.append(proc.pid)
    return found


def test_a_create_cancelled_then_closed_at_once_leaves_nothing_behind(tmp_path):
    # close() stops reading the zygote's answers: a child forked for a cancelled request
    # whose answer is never read must still not run (it never gets the go-ahead).
    env_file = tmp_path / "env.py"
    env_file.write_text(DEMO_ENV.read_text())  # a path only this test's processes name

    async def main(steps: int) -> int:
        provider = LocalProvider(env_file=str(env_file), state_dir=str(tmp_path))
        kept = await provider.create(spec("kept"), {LABEL_RUN: "c"})
        task = asyncio.create_task(provider.create(spec("cancelled"), {LABEL_RUN: "c"}))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await provider.close()
        return kept.data["pid"]

    kept = [asyncio.run(main(steps)) for steps in range(8)]
    wait_gone(kept)
    wait_until(lambda: not serving(env_file), 10, f"nothing left serving {env_file}")
    assert not list(tmp_path.glob("*.json"))


def test_zygote_protocol_a_child_runs_only_once_told_to_and_outlives_its_zygote(tmp_path):
    ours, theirs = socket.socketpair()
    zygote = subprocess.Popen(
        [PY, str(REPO / "providers" / "zygote.py"), f"--fd={theirs.fileno()}",
         *ZYGOTE_RECIPES["hud_ray.envkit"].argv(), "--", "-m", "hud_ray.envkit", str(DEMO_ENV),
         "--port", "0"],
        pass_fds=(theirs.fileno(),), stdout=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True)
    theirs.close()
    replies = ours.makefile("r")
    forked: list[int] = []
    try:
        assert zygote.stdout.readline().startswith("ZYGOTE_READY=")

        def fork() -> tuple[int, int, int]:
            out_r, out_w = os.pipe()
            go_r, go_w = os.pipe()
            socket.send_fds(ours, [b'{"op": "fork"}\n'], [out_w, go_r])
            for fd in (out_w, go_r):
                os.close(fd)
            answer = json.loads(replies.readline())
            assert answer["op"] == "forked", answer
            forked.append(answer["pid"])
            return answer["pid"], out_r, go_w

        unwanted, out_r, go_w = fork()
        assert os.getpgid(unwanted) == unwanted  # its own group, waiting for the go-ahead
        os.close(go_w)  # no go-ahead: it exits without serving, without a word
        assert json.loads(replies.readline()) == {"op": "exit", "pid": unwanted, "code": 0,
                                                  "cpu_s": pytest.approx(0, abs=1)}
        with os.fdopen(out_r) as output:
            assert output.read() == ""

        wanted, out_r, go_w = fork()
        os.write(go_w, b"g")
        os.close(go_w)
        output = os.fdopen(out_r)
        assert output.readline().startswith("HUD_SERVE_PORT=")
        replies.close()
        ours.close()  # EOF: the zygote exits; the env server it forked lives on
        assert zygote.wait(10) == 0
        assert alive(wanted)
        os.killpg(wanted, signal.SIGTERM)
        wait_gone([wanted])
        output.close()
    finally:
        zygote.kill()
        zygote.wait()
        for pid in forked:  # whatever the outcome, nothing of ours lives on
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def test_a_provider_reused_under_a_new_event_loop_starts_a_new_zygote(tmp_path):
    provider = Recording(env_file=str(DEMO_ENV), state_dir=str(tmp_path))

    async def one(key: str) -> None:
        handle = await provider.create(spec(key), {LABEL_RUN: "loops"})
        assert await hello((await provider.ready(handle, 20)).url) == "demo"
        await provider.destroy(handle)

    asyncio.run(one("first"))  # its zygote is bound to this loop's sockets and tasks
    asyncio.run(one("second"))
    first, second = provider.parents
    assert os.getpid() not in (first, second) and first != second
    wait_gone([first])  # the first loop's zygote was let go
    asyncio.run(provider.close())
    wait_gone([*provider.pids, second])


THREAD_AT_IMPORT = textwrap.dedent("""
    import threading
    from hud_ray.envkit import Environment

    threading.Thread(target=threading.Event().wait, name="metrics-flusher", daemon=True).start()
    env = Environment("threaded")

    @env.template(id="noop")
    async def noop():
        yield "nothing"
        yield 1.0
""")


def test_an_env_starting_a_thread_at_import_is_never_forked(tmp_path, caplog):
    env_file = tmp_path / "threaded.py"
    env_file.write_text(THREAD_AT_IMPORT)
    provider = Recording(env_file=str(env_file), state_dir=str(tmp_path))
    caplog.set_level(logging.WARNING, logger="providers.local")

    async def main():
        for key in ("t1", "t2"):
            handle = await provider.create(spec(key), {LABEL_RUN: "t"})
            assert await hello((await provider.ready(handle, 20)).url) == "threaded"
        await provider.close()

    asyncio.run(main())
    assert provider.parents == [os.getpid()] * 2  # plain subprocesses, each with its thread
    [warning] = [r.getMessage() for r in caplog.records if "zygote" in r.getMessage()]
    assert "refusing to fork" in warning and "metrics-flusher" in warning
    wait_gone(provider.pids)


def test_zygote_off_or_an_unrecognised_command_starts_plain_subprocesses(tmp_path):
    command = "{python} -m hud_ray.envkit {env_file} --port 0 --env demo"
    providers = [Recording(env_file=str(DEMO_ENV), state_dir=str(tmp_path), zygote=False),
                 Recording(env_file=str(DEMO_ENV), state_dir=str(tmp_path),
                           command=f"sh -c 'exec {command}'")]

    async def main():
        for i, provider in enumerate(providers):
            handle = await provider.create(spec(f"plain{i}"), {LABEL_RUN: "p"})
            assert await hello((await provider.ready(handle, 20)).url) == "demo"
            await provider.close()

    asyncio.run(main())
    assert [p.parents for p in providers] == [[os.getpid()], [os.getpid()]]
    wait_gone([p.pids[0] for p in providers])


NAMED_BY_ENV = textwrap.dedent("""
    import os
    from hud_ray.envkit import Environment

    env = Environment(os.environ.get("ZY_NAME", "unnamed"))  # read at import time

    @env.template(id="noop")
    async def noop():
        yield "nothing"
        yield 1.0
""")


def test_the_env_module_sees_each_sandboxes_environment_at_import(tmp_path, monkeypatch):
    # One zygote per environment: a different env var means a different zygote, and
    # past MAX_STARTS of them (a per-sandbox environment) plain subprocesses again.
    monkeypatch.setattr("providers.local_zygote.MAX_STARTS", 2)
    env_file = tmp_path / "named.py"
    env_file.write_text(NAMED_BY_ENV)
    provider = Recording(env_file=str(env_file), state_dir=str(tmp_path))

    async def main():
        names = []
        for i, name in enumerate(["alpha", "beta", "alpha", "gamma"]):
            sandbox = SandboxSpec(name=sandbox_name("zy", f"n{i}", 1), env_vars={"ZY_NAME": name})
            handle = await provider.create(sandbox, {LABEL_RUN: "n"})
            names.append(await hello((await provider.ready(handle, 20)).url))
        await provider.close()
        return names

    assert asyncio.run(main()) == ["alpha", "beta", "alpha", "gamma"]
    alpha, beta, alpha_again, gamma = provider.parents
    assert alpha == alpha_again and len({alpha, beta, os.getpid()}) == 3
    assert gamma == os.getpid()  # a third environment: no third zygote
    wait_gone([*provider.pids, alpha, beta])


CRASHING_OWNER = textwrap.dedent("""
    import asyncio, os, sys, psutil
    from providers import SandboxSpec, LABEL_RUN
    from providers.local import LocalProvider

    async def main():
        provider = LocalProvider(env_file=sys.argv[1], state_dir=sys.argv[2])
        handle = await provider.create(SandboxSpec(name="hudray-zy-crash"), {LABEL_RUN: "doomed"})
        await provider.ready(handle, 20)
        pid = handle.data["pid"]
        print(pid, psutil.Process(pid).ppid(), flush=True)
        os._exit(9)  # the owner dies without any cleanup

    asyncio.run(main())
""")


def test_zygote_dies_with_its_owner_and_reap_kills_the_sandboxes_it_forked(tmp_path):
    done = subprocess.run([PY, "-c", CRASHING_OWNER, str(DEMO_ENV), str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 9, done.stderr
    orphan, zygote = map(int, done.stdout.split())
    wait_gone([zygote])  # EOF on its socket: the zygote does not outlive its owner
    assert alive(orphan), "a forked env server outlives its crashed owner, like a subprocess"

    reaper = LocalProvider(state_dir=str(tmp_path), command="{python} -c pass")
    reaped = asyncio.run(reaper.reap({LABEL_RUN: "doomed"}))
    assert [h.data["pid"] for h in reaped] == [orphan]
    wait_gone([orphan])
    assert not list(tmp_path.glob("*.json"))


def test_reap_kills_zygote_children_a_dropped_provider_left_behind(tmp_path):
    async def main():
        owner = Recording(env_file=str(DEMO_ENV), state_dir=str(tmp_path))
        handles = [await owner.create(spec(f"d{i}"), {LABEL_RUN: "dropped"}) for i in range(2)]
        for handle in handles:
            await owner.ready(handle, 20)
        zygote = owner.parents[0]
        assert owner.parents == [zygote] * 2 and zygote != os.getpid()
        del owner, handles  # no destroy, no close: as if its worker had died

        reaper = LocalProvider(state_dir=str(tmp_path), command="{python} -c pass")
        reaped = await reaper.reap({LABEL_RUN: "dropped"})
        pids = [h.data["pid"] for h in reaped]
        assert len(pids) == 2
        await async_wait_until(lambda: not any(map(alive, pids)), 10, "reaped envs to exit")
        return pids

    wait_gone(asyncio.run(main()))
    assert not list(tmp_path.glob("*.json"))


# --- envs that never serve: same rows as with subprocesses --------------------------------


SERVE_FAILS = textwrap.dedent("""
    import sys
    from hud_ray.envkit import Environment

    print("config: /data/app.toml", flush=True)  # printed once, in the zygote
    env = Environment("serve-fails")

    @env.on_start
    async def open_db() -> None:
        print("opening /data/app.db", flush=True)
        print("fatal: /data/app.db is locked", file=sys.stderr, flush=True)
        sys.exit(4)

    @env.template(id="count")
    async def count():
        yield "unreachable"
        yield 0.0
""")


def _failing_row(env_file: Path, tmp_path: Path, ready_timeout_s: float = 20):
    provider = Recording(env_file=str(env_file), state_dir=str(tmp_path), kill_grace_s=0.5)
    rollout = Rollout(task=Task(env="x", id="count"))
    config = RolloutConfig(deadline_s=60, ready_timeout_s=ready_timeout_s)

    async def main():
        row = await run_rollout(rollout, resolve_agent("rule"), provider, config)
        await provider.close()
        return row

    row = asyncio.run(main())
    wait_gone(provider.pids)
    return row, provider


def test_forked_env_that_exits_at_once_is_env_error_with_its_output(tmp_path):
    env_file = tmp_path / "serve_fails.py"
    env_file.write_text(SERVE_FAILS)
    row, provider = _failing_row(env_file, tmp_path)
    assert provider.parents[0] != os.getpid()  # it was forked
    assert row.status is Status.ENV_ERROR and row.error_type == "EnvStartError"
    assert "code 4" in row.error_message and "opening /data/app.db" in row.error_message
    # what importing the env printed (in the zygote) leads its output, as in a fresh process
    assert row.error_message.index("config: /data/app.toml") < row.error_message.index("opening")
    assert "fatal: /data/app.db is locked" in row.error_message


def test_env_exiting_on_import_in_the_zygote_falls_back_and_is_env_error(tmp_path):
    # sys.exit(3) while importing: the zygote is no use (not the code 1 of a raise), so
    # the env runs as a plain subprocess, which exits the same way: the env's failure.
    row, provider = _failing_row(ENVS / "exits_at_once.py", tmp_path)
    assert provider.parents == [os.getpid()]  # the zygote could not load it: a subprocess
    assert row.status is Status.ENV_ERROR and "code 3" in row.error_message
    assert "fatal: /data/fixtures.db: no such file" in row.error_message


def test_forked_env_that_never_prints_its_port_is_env_error_with_its_output(tmp_path):
    row, provider = _failing_row(ENVS / "never_ready.py", tmp_path, ready_timeout_s=1.5)
    assert provider.parents[0] != os.getpid()
    assert row.status is Status.ENV_ERROR
    assert "waiting for shard 1" in row.error_message


# --- hud's own server, forked ------------------------------------------------------------


def hud_python() -> str:
    """$HUD_PYTHON, else hud_ray's own interpreter (hud is the `[hud]` extra)."""
    path = os.environ.get("HUD_PYTHON") or sys.executable
    if importlib.util.find_spec("hud") is None and path == sys.executable:
        pytest.fail("hud is not importable: `make setup` installs the [hud] extra")
    return path


HUD_ENV = textwrap.dedent("""
    import numpy
    from hud import Environment

    env = Environment("zyhud", version="0.1.0")

    @env.template(id="count", description="Count a letter.")
    async def count(text: str = "banana", letter: str = "a"):
        answer = yield f"How many {letter!r} in {text!r}?"
        # BLAS after fork: numpy started its thread pool in the zygote, before the fork
        ones = numpy.ones((512, 512)) @ numpy.ones((512, 512))  # a threaded gemm
        yield 1.0 if int(answer) == text.count(letter) and ones[0, 0] == 512 else 0.0
""")


async def counting_agent(session: Session) -> str:
    args = session.task.args
    return str(args["text"].count(args["letter"]))


@pytest.mark.slow  # hud's own imports take seconds (once: that is the point)
def test_hud_env_server_forked_from_a_zygote_runs_full_rollouts(tmp_path):
    python = hud_python()
    env_file = tmp_path / "env_hud.py"
    env_file.write_text(HUD_ENV)
    command = (f"env HUD_API_KEY= HUD_CLI_ANALYTICS_ENABLED=false {python} "
               "-m hud.environment.server {env_file} --port 0")
    provider = Recording(env_file=str(env_file), command=command, state_dir=str(tmp_path / "l"),
                         kill_grace_s=2.0)
    words = ["banana", "cherry", "kiwi", "papaya"]
    rollouts = [Rollout(task=Task(env="zyhud", id="count", args={"text": w, "letter": "a"}))
                for w in words]

    async def main():
        config = RolloutConfig(deadline_s=120, ready_timeout_s=90)
        rows = await asyncio.gather(*(run_rollout(r, counting_agent, provider, config)
                                      for r in rollouts))
        await provider.close()
        return rows

    rows = asyncio.run(main())
    assert [(r.status, r.reward) for r in rows] == [(Status.OK, 1.0)] * 4, rows[0].error_message
    assert len(set(provider.pids)) == 4 and len(set(provider.parents)) == 1
    zygote = provider.parents[0]
    # Forked, so the zygote did not refuse: importing hud (HUD_API_KEY empty) left no
    # Python thread running — a fork would have inherited its locks but not the thread.
    assert zygote != os.getpid()
    wait_gone([*provider.pids, zygote], timeout_s=20)
    assert not list((tmp_path / "l").glob("*.json"))


def test_zygote_declines_a_module_it_was_not_told_how_to_prepare(tmp_path):
    # What to load is data from the caller (env_server.ZYGOTE_RECIPES): without it, the
    # zygote knows only hud's own server, and says so instead of guessing.
    ours, theirs = socket.socketpair()
    done = subprocess.run(
        [PY, str(REPO / "providers" / "zygote.py"), f"--fd={theirs.fileno()}", "--",
         "-m", "hud_ray.envkit", str(DEMO_ENV), "--port", "0"],
        pass_fds=(theirs.fileno(),), capture_output=True, text=True, cwd=REPO, timeout=60)
    theirs.close()
    ours.close()
    assert done.returncode == EXIT_DECLINED, done.stdout + done.stderr
    assert "no --prepare given for hud_ray.envkit" in done.stdout
