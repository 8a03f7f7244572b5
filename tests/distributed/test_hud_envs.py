"""HUD users' own envs and agents, unchanged, on the one install — through `hud-ray run`
(CLI, Ray workers) AND hud's own `Taskset.run` in the same test: the same reward per row
and the same tool calls, call for call.

The envs (tests/fakes/hud_envs/) are written the way hud 0.6.21's docs write them: an
`Environment` with `@env.template`, FastMCP tools published as an MCP capability, a raw TCP
capability reached through `tunnel.open`, a `returns=` answer, `EvaluationResult` grades,
an agent-less `verifier`, an `env.workspace` ssh shell, and `tasks.py` task files. The
agents are hud's own `OpenAIChatAgent` against a scripted OpenAI-compatible server on
127.0.0.1 (tests/fakes/openai_server.py), and a hud `Agent` subclass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.fakes.hud_envs.policy import policy
from tests.fakes.openai_server import ScriptedModel

REPO = Path(__file__).resolve().parents[2]
HUD_ENVS = REPO / "tests" / "fakes" / "hud_envs"
TASKSET_RUN = REPO / "tests" / "fakes" / "hud_side" / "taskset_run.py"
HUD_RAY = str(Path(sys.executable).parent / "hud-ray")
OPENAI_CHAT = "hud.agents.openai_compatible:OpenAIChatAgent"
KEY_VAR = "SCRIPTED_MODEL_KEY"

pytestmark = [pytest.mark.hud, pytest.mark.slow]


def _env() -> dict[str, str]:
    env = {**os.environ, "HUD_API_KEY": "", "HUD_FILE_TRACKING_ENABLED": "false",
           KEY_VAR: "sk-scripted-not-a-secret", "RAY_AUTH_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def hud_taskset_run(tasks: Path, env_file: Path, agent: dict, tmp: Path) -> dict[str, dict]:
    out = tmp / "hud_rows.json"
    done = subprocess.run([sys.executable, str(TASKSET_RUN), str(tasks), str(env_file),
                           json.dumps(agent), str(out)], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def hud_ray_run(tasks: Path, agent: str, tmp: Path, *extra: str) -> list[dict]:
    run_id = f"hudenv-{int(time.time() * 1000)}"
    done = subprocess.run([HUD_RAY, "run", str(tasks), "--agent", agent, "--out", str(tmp),
                           "--run-id", run_id, "--concurrency", "4", "--no-progress", *extra],
                          env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return pq.read_table(tmp / run_id / "rollouts").to_pylist()


def model_opts(model: ScriptedModel) -> list[str]:
    return ["--agent-opt", "model=scripted-1", "--agent-opt", f"base_url={model.base_url}",
            "--agent-opt", f"api_key_env={KEY_VAR}"]


def side_by_side(env_dir: Path, tmp: Path):
    """The env's tasks.py with hud's OpenAIChatAgent, through hud's Taskset.run and then
    `hud-ray run`, against one scripted model: (hud's rows, ours, hud's calls, ours)."""
    tasks = env_dir / "tasks.py"
    with ScriptedModel(policy) as model:
        theirs = hud_taskset_run(tasks, env_dir / "env.py",
                                 {"spec": OPENAI_CHAT, "config": {
                                     "model": "scripted-1", "base_url": model.base_url,
                                     "api_key": "sk-scripted-not-a-secret"}}, tmp)
        their_calls = model.tool_calls()
        model.conversations.clear()
        rows = hud_ray_run(tasks, f"hud:{OPENAI_CHAT}", tmp, *model_opts(model))
        return theirs, rows, their_calls, model.tool_calls()


def test_mcp_tools_verifier_and_tasks_py_match_hud_taskset_run(tmp_path):
    theirs, rows, their_calls, our_calls = side_by_side(HUD_ENVS / "tools", tmp_path)
    ours = {row["slug"]: row for row in rows}
    assert set(ours) == set(theirs) and len(ours) == 6
    for slug, row in ours.items():
        assert row["status"] == "ok", (slug, row["error_message"])
        assert row["reward"] == theirs[slug]["reward"], (slug, row["reward"], theirs[slug])
    # The verifier row: the verifier's grade (half of the actor's 1.0) is the grade of record.
    assert ours["add-verified"]["reward"] == 0.5
    steps = json.loads(ours["add-verified"]["steps"])
    assert [s["grade"]["score"] for s in steps if s["kind"] == "actor_grade"] == [1.0]
    # Several turns of MCP tool calls, the same calls in the same order for every task.
    assert our_calls == their_calls
    assert len(our_calls["Use the add tool twice to compute 1 + 2 + 3. "
                         "Reply with the number only."]) == 2
    # The key was given by variable name: its value is nowhere in the run directory.
    for path in tmp_path.rglob("*"):
        if path.is_file() and "hudenv-" in str(path):
            assert b"sk-scripted-not-a-secret" not in path.read_bytes(), path


def test_raw_capability_through_tunnel_with_a_hud_agent_matches_hud(tmp_path):
    tasks = tmp_path / "kv.jsonl"
    tasks.write_text("".join(json.dumps({"env": "tools", "id": "kv_get", "args": {"key": k}})
                             + "\n" for k in ("k1", "k2", "k5")))
    env_file = HUD_ENVS / "tools" / "env.py"
    agent = str(HUD_ENVS / "kv_agent.py") + ":KVAgent"
    theirs = hud_taskset_run(tasks, env_file, {"spec": agent}, tmp_path)
    rows = hud_ray_run(tasks, f"hud:{agent}", tmp_path, "--provider-opt", f"env_file={env_file}")
    assert {r["slug"]: r["reward"] for r in rows} == {s: v["reward"] for s, v in theirs.items()}
    assert all(r["status"] == "ok" and r["reward"] == 1.0 for r in rows), rows


def test_ssh_workspace_with_the_bash_tool_matches_hud(tmp_path):
    theirs, rows, their_calls, our_calls = side_by_side(HUD_ENVS / "workspace", tmp_path)
    assert {r["slug"]: r["reward"] for r in rows} == {s: v["reward"] for s, v in theirs.items()}
    assert all(r["status"] == "ok" and r["reward"] == 1.0 for r in rows), rows
    assert our_calls == their_calls and all(c[0][0] == "bash" for c in our_calls.values())


# --- a native agent: session.mcp() on local and attach ----------------------------------------

NATIVE = str(HUD_ENVS / "native_agent.py") + ":agent"


def _native_tasks(tmp: Path) -> Path:
    tasks = tmp / "native.jsonl"
    rows = [{"env": "tools", "id": "add", "args": {"a": 7, "b": 8}},
            {"env": "tools", "id": "lookup", "args": {"key": "k9"}},
            {"env": "tools", "id": "kv_get", "args": {"key": "k4"}},
            {"env": "tools", "id": "add", "args": {"a": -3, "b": 3}}]
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tasks


def test_native_agent_uses_mcp_tools_through_session_mcp_on_local(tmp_path):
    rows = hud_ray_run(_native_tasks(tmp_path), NATIVE, tmp_path,
                       "--provider-opt", f"env_file={HUD_ENVS / 'tools' / 'env.py'}")
    assert len(rows) == 4 and all(r["status"] == "ok" and r["reward"] == 1.0 for r in rows), rows
    assert any('"name": "lookup"' in r["steps"] for r in rows)


def test_native_agent_uses_mcp_tools_through_session_mcp_on_attach(tmp_path):
    from tests.fakes.procs import EnvServer

    with EnvServer(HUD_ENVS / "tools" / "env.py", module="hud.environment.server",
                   extra_env={"HUD_API_KEY": ""}, timeout_s=90) as server:
        rows = hud_ray_run(_native_tasks(tmp_path), NATIVE, tmp_path, "--provider", "attach",
                           "--provider-opt", f"url={server.url}")
    assert len(rows) == 4 and all(r["status"] == "ok" and r["reward"] == 1.0 for r in rows), rows
    assert {r["provider"] for r in rows} == {"attach"}


def test_attach_to_nothing_stops_the_run_in_seconds(tmp_path):
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t0 = time.monotonic()
    done = subprocess.run([HUD_RAY, "run", str(_native_tasks(tmp_path)), "--agent", NATIVE,
                           "--provider", "attach", "--provider-opt", f"url=tcp://127.0.0.1:{port}",
                           "--out", str(tmp_path), "--no-progress"], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("hud-ray:")]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert f"nothing listens at tcp://127.0.0.1:{port} (connection refused)" in lines[0]
    assert time.monotonic() - t0 < 60  # Ray's start-up included; not 4 x 3 x the 120 s budget
