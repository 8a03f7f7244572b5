"""hud 0.6.21 interop, both ways, from the one install (hud_ray + hud in .venv):

(a) hud_ray's EnvClient / rollout / local provider drive hud's REAL env server
    (`<hud python> -m hud.environment.server ENV --port 0`);
(b) hud's OWN client (`hud.eval.run.rollout`) drives an envkit server serving the demo env;
and hud's server answers the reference conversation (fakes/transcript.py) exactly as
envkit does (test_envkit.py checks envkit against the same EXPECTED).

hud's python: hud_ray's own (hud is the `[hud]` extra, installed by `make setup`), or $HUD_PYTHON.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hud_ray.agents import Session
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, Task

from .fakes.procs import DEMO_ENV, ENVS, EnvServer, RawConn, RecordingLocal, alive, wait_gone
from .fakes.transcript import EXPECTED, conversation

HUD_VERSION = "0.6.21"
# No API key: hud reports nothing anywhere. No analytics, no span files in $HOME.
HUD_ENV = {"HUD_API_KEY": "", "HUD_CLI_ANALYTICS_ENABLED": "false",
           "HUD_FILE_TRACKING_ENABLED": "false"}
DRIVER = Path(__file__).parent / "fakes" / "hud_side" / "drive_envkit.py"

pytestmark = pytest.mark.hud


@pytest.fixture(scope="module")
def hud_python() -> str:
    """hud_ray's own interpreter (one install: hud is the `[hud]` extra), or $HUD_PYTHON."""
    path = os.environ.get("HUD_PYTHON") or sys.executable
    done = subprocess.run([path, "-c", "import importlib.metadata as m; print(m.version('hud'))"],
                          capture_output=True, text=True, timeout=60)
    # A python without hud is a setup bug (`make setup` installs it): fail, never skip.
    assert done.returncode == 0, f"{path} cannot report hud's version: {done.stderr}"
    assert done.stdout.strip() == HUD_VERSION, f"{path} has hud {done.stdout.strip()}"
    return path


def _hud_env() -> dict[str, str]:
    env = {**os.environ, **HUD_ENV}
    env.pop("HUD_TELEMETRY_LOCAL_DIR", None)
    env.pop("PYTHONPATH", None)  # hud's venv must not see hud_ray's code
    return env


# --- hud's server answers like envkit ------------------------------------------------------


@pytest.mark.slow  # hud's own imports take seconds
def test_hud_server_answers_the_reference_conversation(hud_python):
    with EnvServer(ENVS / "dual.py", python=hud_python, module="hud.environment.server",
                   extra_env=HUD_ENV, timeout_s=90) as server:
        seen = asyncio.run(conversation(server.port))
    for part, frames in EXPECTED.items():
        assert seen[part] == frames, part


# --- (a) hud_ray drives hud's real env server -----------------------------------------------




async def probe_agent(session: Session) -> str:
    """Solves hud_probe's count template; on the way, uses the env's echo capability
    through tunnel.open, and idles long enough for several heartbeats."""
    reader, writer = await session.open_tunnel("echo")
    writer.write(b"ping through hud\n")
    await writer.drain()
    echoed = (await asyncio.wait_for(reader.readline(), 10)).decode().strip()
    writer.close()
    session.record_step("tunnel", got=echoed)
    await asyncio.sleep(0.8)  # heartbeat_s=0.2: hud's server must accept hello mid-task
    text, letter = session.task.args["text"], session.task.args["letter"]
    wrong = session.task.columns.get("wrong", False)
    return "99" if wrong else str(text.count(letter))


async def stuck_agent(session: Session) -> str:
    await asyncio.Event().wait()
    return "never"


@pytest.mark.slow  # hud's own imports take seconds
def test_hud_rays_rollout_drives_hud_own_env_server(hud_python, tmp_path):
    command = ("env HUD_API_KEY= HUD_CLI_ANALYTICS_ENABLED=false "
               f"{shlex.quote(hud_python)} -m hud.environment.server {{env_file}} --port 0")
    provider = RecordingLocal(env_file=str(ENVS / "hud_probe.py"), command=command,
                              state_dir=str(tmp_path), kill_grace_s=1.0)
    cases = [
        (Rollout(task=Task(env="probe", id="count", args={"text": "banana", "letter": "a"})),
         probe_agent),
        (Rollout(task=Task(env="probe", id="count", args={"text": "cherry", "letter": "r"},
                           columns={"wrong": True})), probe_agent),
        (Rollout(task=Task(env="probe", id="count", args={"text": "kiwi", "letter": "i"},
                           agent_config={"timeout_seconds": 1})), stuck_agent),
    ]

    async def main():
        config = RolloutConfig(deadline_s=120, ready_timeout_s=90, heartbeat_s=0.2)
        return await asyncio.gather(*(run_rollout(r, agent, provider, config)
                                      for r, agent in cases))

    right, wrong, stuck = asyncio.run(main())
    assert (right.status, right.reward) == (Status.OK, 1.0), right.error_message
    assert right.steps[0]["got"] == "echo:ping through hud"
    assert right.env == "probe" and right.prompt.startswith("How many times")
    assert (wrong.status, wrong.reward) == (Status.OK, 0.0), wrong.error_message
    assert stuck.status is Status.TIMEOUT and stuck.timeout_phase == "agent", stuck
    assert len(provider.pids) == 3
    wait_gone(provider.pids, timeout_s=20)


# --- (b) hud's own client drives envkit -------------------------------------------------------


class FrameTap:
    """A TCP relay that records every JSON frame the client sends (raw bytes pass on)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frames: list[dict[str, Any]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def client_to_server() -> None:
            while line := await reader.readline():
                try:
                    self.frames.append(json.loads(line))
                except ValueError:
                    pass  # tunnel payload
                up_writer.write(line)
                await up_writer.drain()
            up_writer.write_eof()

        async def server_to_client() -> None:
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(client_to_server(), server_to_client())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            up_writer.close()


@pytest.mark.slow  # hud's own imports take seconds
def test_hud_own_client_drives_an_envkit_server(hud_python):
    with EnvServer(DEMO_ENV) as server:
        tap = FrameTap(server.port)

        async def main():
            relay = await asyncio.start_server(tap.handle, "127.0.0.1", 0)
            port = relay.sockets[0].getsockname()[1]
            proc = await asyncio.create_subprocess_exec(
                hud_python, str(DRIVER), str(port), env=_hud_env(),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 180)
            relay.close()
            assert proc.returncode == 0, err.decode()[-3000:]
            # afterwards: nothing left parked on the env (hud never says bye: EOF ends it)
            conn = await RawConn.open(server.port)
            leftover = await conn.call("tasks.grade", {"answer": "x"})
            conn.close()
            return [json.loads(line) for line in out.decode().splitlines()], leftover

        results, leftover = asyncio.run(main())
        assert alive(server.pid)

    by_case = {r["case"]: r for r in results}
    assert by_case["count"]["reward"] == 1.0 and by_case["count"]["status"] == "completed"
    assert by_case["kv_lookup"]["reward"] == 1.0  # hud's forwarder → envkit tunnel.open
    assert by_case["kv_lookup"]["content"] == "value-598"
    assert by_case["wrong"]["reward"] == 0.0 and by_case["wrong"]["status"] == "completed"
    assert by_case["timeout"]["stop_reason"] == "timeout"
    assert by_case["heartbeat"]["reward"] == 1.0 and by_case["heartbeat"]["error"] is None
    assert leftover["error"]["code"] == -32600  # "no task in progress"

    methods = [f.get("method") for f in tap.frames]
    assert "bye" not in methods  # hud's client just hangs up
    assert "tasks.cancel" in methods  # its rollout_timeout cancels the env's task
    heartbeats = [f for f in tap.frames
                  if f.get("method") == "hello" and "session_id" in f.get("params", {})]
    assert len(heartbeats) >= 2, "hud's heartbeat never reached envkit"
    assert methods.count("tunnel.open") == 1
