"""envkit: the stdlib env server, as a real subprocess, spoken to with raw frames.

The conversation in fakes/transcript.py is checked here against envkit and, in
test_hud_interop.py, against hud 0.6.21's own server: one EXPECTED for both.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hud_ray.envkit.server import FRAME_LIMIT_BYTES

from .fakes.procs import DEMO_ENV, ENVS, REPO, EnvServer, RawConn, alive
from .fakes.transcript import EXPECTED, conversation


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def dual_server():
    with EnvServer(ENVS / "dual.py") as server:
        yield server


def test_envkit_answers_the_reference_conversation_like_hud(dual_server):
    seen = run(conversation(dual_server.port))
    for part, frames in EXPECTED.items():
        assert seen[part] == frames, part


def test_garbage_first_frame_gets_a_parse_error_and_the_server_lives_on(dual_server):
    async def main():
        conn = await RawConn.open(dual_server.port)
        await conn.send_raw(b"GET / HTTP/1.1\r\n")
        frame = await conn.recv()
        assert frame["id"] is None and frame["error"]["code"] == -32700
        assert "parse error" in frame["error"]["message"]
        assert await conn.at_eof()
        again = await RawConn.open(dual_server.port)
        assert "result" in await again.call("hello")
        again.close()

    run(main())


def test_garbage_mid_session_ends_that_session_only(dual_server):
    async def main():
        conn = await RawConn.open(dual_server.port)
        await conn.call("hello")
        await conn.send_raw(b"{not json\n")
        frame = await conn.recv()
        assert frame is None or frame["error"]["code"] in (-32700, -32000)
        assert await conn.at_eof()
        again = await RawConn.open(dual_server.port)
        assert "result" in await again.call("tasks.list")
        again.close()

    run(main())


def _padded_hello(size: int) -> bytes:
    empty = len(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "hello",
                            "params": {"pad": ""}}, separators=(",", ":")))
    frame = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "hello",
                        "params": {"pad": "p" * (size - empty)}}, separators=(",", ":"))
    assert len(frame) == size
    return frame.encode() + b"\n"


def test_a_request_of_exactly_the_frame_limit_is_served(dual_server):
    async def main():
        conn = await RawConn.open(dual_server.port)
        await conn.send_raw(_padded_hello(FRAME_LIMIT_BYTES))
        frame = await conn.recv(timeout_s=30)
        assert frame["id"] == 1 and frame["result"]["env"]["name"] == "dual"
        conn.close()

    run(main())


@pytest.mark.parametrize("where", ["first-frame", "mid-session"])
def test_an_oversized_request_is_refused_and_the_server_lives_on(dual_server, where):
    async def main():
        conn = await RawConn.open(dual_server.port)
        if where == "mid-session":
            await conn.call("hello")
        try:
            await conn.send_raw(_padded_hello(FRAME_LIMIT_BYTES + 1))
            frame = await conn.recv(timeout_s=30)
        except ConnectionError:
            frame = None  # the server hung up with our bytes unread: a reset, also fine
        if frame is not None:
            assert frame["id"] is None and frame["error"]["code"] == -32000
            assert str(FRAME_LIMIT_BYTES) in frame["error"]["message"]
        conn.close()
        again = await RawConn.open(dual_server.port)
        assert "result" in await again.call("hello")
        again.close()

    run(main())


def test_heartbeat_during_a_task_keeps_the_session_and_its_task():
    async def main(port):
        conn = await RawConn.open(port)
        sid = (await conn.call("hello"))["result"]["session_id"]
        await conn.call("tasks.start", {"id": "kv_lookup", "args": {"key": "key5"}})
        for _ in range(3):
            assert (await conn.call("hello", {"session_id": sid}))["result"]["session_id"] == sid
        assert (await conn.call("tasks.grade", {"answer": "value-595"}))["result"] == {"score": 1.0}
        conn.close()

    with EnvServer(DEMO_ENV) as server:
        run(main(server.port))


def _envkit(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hud_ray.envkit", *args, "--port", "0"],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_env_file_without_an_environment_is_named_in_the_error():
    done = _envkit(str(ENVS / "no_env.py"))
    assert done.returncode == 2
    assert "no_env.py" in done.stderr and "found none" in done.stderr


def test_two_environments_need_env_and_env_picks_one():
    done = _envkit(str(ENVS / "two_envs.py"))
    assert done.returncode == 2 and "'alpha', 'beta'" in done.stderr

    async def main(port):
        conn = await RawConn.open(port)
        await conn.call("hello")
        started = await conn.call("tasks.start", {"id": "which", "args": {}})
        assert started["result"]["prompt"] == "beta"
        conn.close()

    proc = subprocess.Popen([sys.executable, "-m", "hud_ray.envkit", str(ENVS / "two_envs.py"),
                             "--env", "beta", "--port", "0"], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.startswith("HUD_SERVE_PORT=")
        run(main(int(line.split("=")[1])))
    finally:
        proc.kill()
        proc.wait()


def test_env_file_that_raises_on_import_is_reported_with_its_error():
    done = _envkit(str(ENVS / "import_error.py"))
    assert done.returncode == 2
    assert "connecting to the license server" in done.stdout
    assert f"{ENVS / 'import_error.py'}:4: " in done.stderr
    assert "RuntimeError: license server unreachable" in done.stderr


@pytest.mark.parametrize("source, where, message", [
    ("def broken(:\n    pass\n", 1, "SyntaxError"),
    ("from hud_ray.envkit import Environment\nenv = Environment('x')\n\n"
     "@env.template()\ndef plain():\n    return 1\n", 4, "must be an async generator"),
])
def test_broken_env_sources_fail_with_exit_2_naming_file_and_line(tmp_path, source, where,
                                                                   message):
    path = tmp_path / "env.py"
    path.write_text(source)
    done = _envkit(str(tmp_path))  # a directory holding env.py is accepted too
    assert done.returncode == 2, done
    assert f"{path}:{where}: " in done.stderr and message in done.stderr


def test_missing_env_file_is_named():
    done = _envkit("/nonexistent/env.py")
    assert done.returncode == 2 and "/nonexistent/env.py: env file not found" in done.stderr


def test_sigterm_closes_held_tasks_then_runs_shutdown_hooks_in_reverse(tmp_path):
    async def hold(port):
        conn = await RawConn.open(port)
        await conn.call("hello")
        assert (await conn.call("tasks.start", {"id": "held", "args": {"tag": "t1"}}))["result"]
        return conn

    server = EnvServer(ENVS / "lifecycle.py", extra_env={"LIFECYCLE_DIR": str(tmp_path)})
    try:
        async def main():
            conn = await hold(server.port)  # connection stays open: a task in flight
            os.kill(server.pid, signal.SIGTERM)
            assert await conn.at_eof()

        run(main())
        assert server.proc.wait(timeout=10) == 0
    finally:
        server.stop()
    marks = (tmp_path / "marks.txt").read_text().split()
    assert marks == ["start", "cleanup-t1", "stop-b", "stop-a"]
    assert not alive(server.pid)


def test_capability_daemon_is_started_before_hello_reports_it():
    async def main(port):
        conn = await RawConn.open(port)
        bindings = (await conn.call("hello"))["result"]["bindings"]
        conn.close()
        (kv,) = bindings
        host, kv_port = kv["url"].removeprefix("tcp://").split(":")
        reader, writer = await asyncio.open_connection(host, int(kv_port))
        writer.write(b"GET key1\n")
        await writer.drain()
        assert (await reader.readline()) == b"value-919\n"
        writer.close()

    with EnvServer(DEMO_ENV) as server:
        run(main(server.port))


def test_demo_env_manifest_lists_six_templates_with_arg_types(demo_env: Path):
    async def main(port):
        conn = await RawConn.open(port)
        tasks = (await conn.call("tasks.list"))["result"]["tasks"]
        conn.close()
        return {t["id"]: t["args"] for t in tasks}

    with EnvServer(demo_env) as server:
        manifest = run(main(server.port))
    assert sorted(manifest) == ["arith", "count", "kv_lookup", "reverse", "riddle", "sort"]
    assert manifest["arith"]["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"},
                                               "op": {"type": "string"}}
    assert manifest["sort"]["required"] == ["numbers"]
