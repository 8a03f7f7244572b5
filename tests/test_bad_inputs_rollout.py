"""Bad inputs only a rollout can discover (docs/bad-inputs.md): each becomes ONE row whose
status and error message say what was wrong — never an exception, never a hang — and the
env process is gone afterwards. Real env servers (local provider) or a real socket peer.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from hud_ray.agents import Session, resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import RolloutResult, Status
from hud_ray.tasks import Rollout, Task
from hud_ray.wire import FRAME_LIMIT_BYTES
from providers.attach import AttachProvider

from .fakes.peers import Peer, reply, serving
from .fakes.procs import ENVS, RecordingLocal, wait_gone


def rollout(template: str, **row: Any) -> Rollout:
    return Rollout(task=Task(env="bad-grades", id=template, **row))


def answer(text: str):
    async def agent(session: Session) -> str:
        return text
    return agent


def one(env_file: str, template: str, tmp_path: Path, agent: Any = "nop",
        row: dict[str, Any] | None = None, **config: Any) -> RolloutResult:
    """One rollout against `env_file`; afterwards every env process it started is gone."""
    options = {"env_file": str(ENVS / env_file), "state_dir": str(tmp_path / "ledger"),
               "kill_grace_s": 0.5, **config.pop("provider", {})}
    provider = RecordingLocal(**options)
    agent = resolve_agent(agent) if isinstance(agent, str) else agent

    async def main() -> RolloutResult:
        try:
            return await run_rollout(rollout(template, **(row or {})), agent, provider,
                                     RolloutConfig(**{"deadline_s": 30, **config}))
        finally:
            await provider.close()

    result = asyncio.run(main())
    wait_gone(provider.pids)
    assert not result.fatal and result.reward is None, result
    return result


# --- the grade ------------------------------------------------------------------------------


def test_grade_that_is_a_string_is_env_error_naming_template_and_type(tmp_path):
    row = one("bad_grades.py", "string_grade", tmp_path)
    assert row.status is Status.ENV_ERROR, row
    assert "template 'string_grade' graded with str, not a number" in row.error_message


def test_grade_without_a_score_key_says_so(tmp_path):
    row = one("bad_grades.py", "no_score", tmp_path)
    assert row.status is Status.ENV_ERROR, row
    assert "graded with a dict without a 'score' key (keys: ['info', 'reward'])" \
        in row.error_message


def test_non_finite_score_is_env_error(tmp_path):
    row = one("bad_grades.py", "inf_score", tmp_path)
    assert row.status is Status.ENV_ERROR, row
    assert "template 'inf_score' graded with a non-finite score (inf)" in row.error_message


def _foreign_env(grade: dict[str, Any]):
    """A non-envkit env server (like hud's) that grades with whatever `grade` is."""
    async def behaviour(msg: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        results = {"tasks.start": {"prompt": "Say anything."}, "tasks.grade": grade, "bye": {}}
        writer.write(reply(msg["id"], results.get(msg["method"], {})))
        await writer.drain()
        return msg["method"] != "bye"
    return Peer(behaviour)


@pytest.mark.parametrize("grade, named", [
    ({"reward": 1.0}, "tasks.grade: score is not a number: {\"reward\": 1.0}"),
    ({"score": "1.0"}, "tasks.grade: score is not a number"),
    ({"score": None}, "tasks.grade: score is not a number"),
])
def test_grade_frame_without_a_numeric_score_from_a_foreign_env(grade, named):
    async def main() -> RolloutResult:
        async with serving(_foreign_env(grade)) as peer:
            return await run_rollout(Rollout(task=Task(id="any")), resolve_agent("nop"),
                                     AttachProvider(url=peer.url), RolloutConfig(deadline_s=10))

    row = asyncio.run(main())
    assert row.status is Status.ENV_ERROR and row.error_type == "ProtocolError", row
    assert named in row.error_message.replace("'", '"') and row.reward is None


# --- frames over the wire limit --------------------------------------------------------------


def test_env_reply_over_the_frame_limit_is_env_error_naming_size_and_limit(tmp_path):
    row = one("bad_grades.py", "huge_prompt", tmp_path)
    assert row.status is Status.ENV_ERROR, row
    assert row.error_message.startswith("tasks.start: env error")
    assert f"limit is {FRAME_LIMIT_BYTES}" in row.error_message


def test_agent_answer_over_the_frame_limit_is_agent_error(tmp_path):
    row = one("bad_grades.py", "echo_len", tmp_path, agent=answer("y" * (FRAME_LIMIT_BYTES + 10)))
    assert row.status is Status.AGENT_ERROR and row.error_type == "FrameTooLarge", row
    assert "the agent's answer is too large: tasks.grade frame is" in row.error_message
    assert f"the limit is {FRAME_LIMIT_BYTES} bytes" in row.error_message


# --- an env that never serves ------------------------------------------------------------------


def test_env_that_never_prints_its_port_fails_within_the_startup_budget(tmp_path):
    row = one("never_ready.py", "count", tmp_path, ready_timeout_s=1.5, deadline_s=60)
    assert row.status is Status.ENV_ERROR and row.error_type == "EnvStartError", row
    assert "HUD_SERVE_PORT" in row.error_message and "1.5" in row.error_message
    assert "waiting for shard 1 (upstream not answering)" in row.error_message  # its output
    assert row.total_s < 15  # the startup budget, not the 60 s deadline


def test_env_that_exits_at_once_reports_code_and_last_output(tmp_path):
    row = one("exits_at_once.py", "count", tmp_path)
    assert row.status is Status.ENV_ERROR and row.error_type == "EnvStartError", row
    assert "(exit code 3)" in row.error_message
    assert "fatal: /data/fixtures.db: no such file" in row.error_message


def test_env_file_raising_on_import_names_file_line_and_error(tmp_path):
    row = one("import_error.py", "count", tmp_path)
    assert row.status is Status.ENV_ERROR and row.error_type == "EnvStartError", row
    assert row.error_message.startswith(
        f"env server failed to start: {ENVS / 'import_error.py'}:4: RuntimeError: license "
        "server unreachable"), row.error_message


def test_env_file_without_an_environment(tmp_path):
    row = one("no_env.py", "count", tmp_path)
    assert row.status is Status.ENV_ERROR, row
    assert "no_env.py: expected one envkit Environment, found none" in row.error_message


def test_env_port_already_in_use_names_the_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = f"{{python}} -m hud_ray.envkit {{env_file}} --port {port}"
        row = one("bad_grades.py", "echo_len", tmp_path, provider={"command": command})
    assert row.status is Status.ENV_ERROR, row  # a fixed port in the command: its config
    assert f"cannot serve on 127.0.0.1:{port}" in row.error_message
    assert "address already in use" in row.error_message


def test_attach_to_a_port_where_nothing_listens(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The default ready budget (120 s): a refused connect is an answer, given in seconds.
    row = asyncio.run(run_rollout(Rollout(task=Task(id="any")), resolve_agent("nop"),
                                  AttachProvider(url=f"tcp://127.0.0.1:{port}"),
                                  RolloutConfig(deadline_s=600)))
    assert row.status is Status.ENV_ERROR and row.error_type == "EnvStartError", row
    assert f"nothing listens at tcp://127.0.0.1:{port} (connection refused)" in row.error_message
    assert row.total_s < 5, row.total_s


# --- the task asks for something the env does not have -------------------------------------------


def test_task_naming_a_template_the_env_lacks(tmp_path):
    row = one("faulty.py", "reverse_word", tmp_path)
    assert row.status is Status.ENV_ERROR, row
    assert "unknown task: 'reverse_word'" in row.error_message


def test_task_args_the_template_does_not_take(tmp_path):
    row = one("faulty.py", "ok", tmp_path, row={"args": {"wrd": "abc"}})
    assert row.status is Status.ENV_ERROR, row
    assert "template 'ok': bad args ['wrd']" in row.error_message
    assert "unexpected keyword argument 'wrd'" in row.error_message
    assert json.loads(row.to_row()["args"]) == {"wrd": "abc"}
