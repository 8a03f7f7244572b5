"""Which server serves an env file, `hud serve` as a zygote command, and the one-line
reason an env server died before serving."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from hud_ray.agents import resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, Task
from providers.env_server import detect_server, start_failure_summary
from providers.local import LocalProvider
from providers.zygote import recognise

REPO = Path(__file__).resolve().parents[2]
HUD_TOOLS = REPO / "tests" / "fakes" / "hud_envs" / "tools" / "env.py"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("source, kind", [
    ("from hud import Environment\nenv = Environment('a')\n", "hud"),
    ("from hud.environment import Environment\n", "hud"),
    ("import hud.capabilities\n", "hud"),
    ("from hud_ray.envkit import Environment\n", "envkit"),
    ("try:\n    from hud import Environment\nexcept ImportError:\n"
     "    from hud_ray.envkit import Environment\n", "envkit"),  # envkit named: envkit
    ("import os\n", "envkit"),
    ("def broken(:\n", "envkit"),  # envkit's loader reports the syntax error, file and line
], ids=["from-hud", "hud.environment", "hud-submodule", "envkit", "both", "neither", "syntax"])
def test_server_is_read_from_the_env_files_imports(tmp_path, source, kind):
    env_file = tmp_path / "env.py"
    env_file.write_text(source)
    assert detect_server(env_file) == kind
    assert detect_server(tmp_path) == kind  # a directory means its env.py


def test_local_provider_picks_the_server_and_the_option_forces_it(tmp_path):
    assert LocalProvider(env_file=str(HUD_TOOLS)).command.startswith(
        "{python} -m hud.environment.server")
    demo = REPO / "examples" / "demo" / "env.py"
    assert "hud_ray.envkit" in LocalProvider(env_file=str(demo)).command
    assert "hud_ray.envkit" in LocalProvider(env_file=str(HUD_TOOLS), server="envkit").command
    assert LocalProvider(env_file=str(demo), command="x {env_file}").command == "x {env_file}"


@pytest.mark.parametrize("argv, expected", [
    (["hud", "serve", "env.py", "--port", "0"], ("env.py", None, "127.0.0.1")),
    (["hud", "serve", "env.py:blank", "-p", "0", "--host", "127.0.0.2"],
     ("env.py", "blank", "127.0.0.2")),
    (["hud", "serve", "env.py", "-p", "8765"], None),  # a fixed port cannot be shared
    (["hud", "serve", "pkg.mod:make", "--arg", "n=1", "--port", "0"], None),  # a factory
    (["hud", "serve", "env.py", "-v", "--port", "0"], None),
])
def test_hud_serve_is_recognised_as_hud_s_server(monkeypatch, argv, expected):
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    cmd = recognise(argv)
    if expected is None:
        assert cmd is None
        return
    assert cmd is not None and cmd.kind == "hud" and cmd.module == "hud.environment.server"
    assert (cmd.env_file, cmd.env_name, cmd.host) == expected
    assert Path(cmd.python).parent == BIN  # the python the `hud` script runs under


def test_a_hud_serve_command_serves_a_rollout_from_the_zygote(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    provider = LocalProvider(env_file=str(HUD_TOOLS), command="hud serve {env_file} --port 0",
                             state_dir=str(tmp_path / "ledger"))
    task = Task(env="tools", id="kv_get", args={"key": "k2"})

    async def agent(session):
        reader, writer = await session.open_tunnel("kv")
        writer.write(b"k2\n")
        await writer.drain()
        value = (await reader.readline()).decode().strip()
        writer.close()
        return value

    async def main():
        try:
            return await run_rollout(Rollout(task=task), resolve_agent(agent), provider,
                                     RolloutConfig(deadline_s=90, ready_timeout_s=80))
        finally:
            await provider.close()

    row = asyncio.run(main())
    assert row.status is Status.OK and row.reward == 1.0, row.error_message


@pytest.mark.parametrize("output, summary", [
    ("loading\nenvkit: cannot load /x/env.py:4: RuntimeError: boom\n",
     "cannot load /x/env.py:4: RuntimeError: boom"),
    ('Traceback (most recent call last):\n  File "/usr/lib/python3.11/runpy.py", line 1, in x\n'
     '  File "app/env.py", line 7, in <module>\n    import fastmcp\n'
     "ModuleNotFoundError: No module named 'fastmcp'\n",
     "app/env.py:7: ModuleNotFoundError: No module named 'fastmcp'"),
    ('Traceback (most recent call last):\n  File "/v/site-packages/hud/x.py", line 3, in y\n'
     "hud.Error: app/env.py:2: ValueError: bad\n", "app/env.py:2: ValueError: bad"),
    ("starting\nfatal: /data/app.db is locked\n", "fatal: /data/app.db is locked"),
    ("", "(no output)"),
], ids=["envkit", "traceback", "located-message", "plain", "silent"])
def test_start_failure_summary_is_one_line_naming_file_line_and_error(output, summary):
    assert start_failure_summary(output) == summary
