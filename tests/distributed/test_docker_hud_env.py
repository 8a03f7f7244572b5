"""A hud env image on the docker provider: tests/fakes/hud_envs/tools (FastMCP tools, a raw
`kv` capability) built offline by `hud-ray image build` (hud installed in the image from a
host-made wheelhouse) and served by hud's own server in the container, run by `hud-ray run
--provider docker` and by `hud-ray run --provider local`: the same reward per row, zero
containers left. Skipped, with the reason, only when no Docker daemon answers."""

from __future__ import annotations

import json
import os
import urllib.parse
import uuid
from pathlib import Path

import pytest

from hud_ray.results import read_results
from providers import LABEL_RUN, imagedir
from providers.docker import wheelhouse
from tests.fakes.docker_daemon import (
    BASE_IMAGE,
    containers,
    daemon,
    remove_all,
    require_daemon,
)

from .conftest import REPO, cli, kill_tree

pytestmark = [pytest.mark.hud, pytest.mark.slow]

TOOLS_DIR = REPO / "tests" / "fakes" / "hud_envs" / "tools"
TOOLS_TAG = "hudray-tools:t"
WORKSPACE_DIR = REPO / "tests" / "fakes" / "hud_envs" / "workspace"
WORKSPACE_TAG = "hudray-workspace:t"
NATIVE = f"{REPO / 'tests/fakes/hud_envs/native_agent.py'}:agent"
OPENAI_CHAT = "hud:hud.agents.openai_compatible:OpenAIChatAgent"
KEY_VAR = "SCRIPTED_MODEL_KEY"
# Tool calls through session.mcp("tools"), raw bytes through session.open_tunnel("kv");
# the last two rows grade 0.0, so equal rewards say more than "everything passed".
ROWS = [{"id": "add", "args": {"a": 7, "b": 8}},
        {"id": "add", "args": {"a": -3, "b": 3}},
        {"id": "lookup", "args": {"key": "k9"}},
        {"id": "kv_get", "args": {"key": "k4"}},
        {"id": "lookup", "args": {"key": "missing"}},
        {"id": "kv_get", "args": {"key": "missing"}}]


@pytest.fixture
def run_id():
    run = f"dkrhud-{uuid.uuid4().hex[:8]}"
    yield run
    remove_all({LABEL_RUN: run})


def _ray_env(ray_local) -> dict[str, str]:
    return {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
            "HUD_RAY_STATE_DIR": os.environ["HUD_RAY_STATE_DIR"],
            "HUD_API_KEY": "", "HUD_FILE_TRACKING_ENABLED": "false"}


def _run(tasks: Path, out: Path, run_id: str, env: dict[str, str], *provider: str,
         agent: str = NATIVE) -> dict:
    run = cli("run", str(tasks), "--agent", agent, *provider, "--concurrency", "3",
              "--out", str(out), "--run-id", run_id, "--no-progress", env=env)
    try:
        _, stderr = run.communicate(timeout=300)
    finally:
        kill_tree(run)
    assert run.returncode == 0, stderr[-3000:]
    return {row["rollout_key"]: row for row in read_results(out / run_id).to_pylist()}


def _build(env_dir: Path, tag: str) -> str:
    """`hud-ray image build` of a hud env directory, as a user runs it (layers cached after
    the first build: the wheelhouse layer comes first, shared by envs with the same wheels)."""
    require_daemon()
    build = cli("image", "build", str(env_dir), "--tag", tag,
                "--build-arg", f"BASE_IMAGE={BASE_IMAGE}")
    stdout, stderr = build.communicate(timeout=840)
    assert build.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == tag
    assert f"built {tag}: " in stderr and " MB in " in stderr  # size and time, on stderr
    # The wheels came from the host, for the base image's own Python.
    stamp = json.loads((env_dir / wheelhouse.WHEELHOUSE / wheelhouse.STAMP).read_text())
    assert stamp["target"]["version"] == "3.11"
    assert any(env_dir.glob(f"{wheelhouse.WHEELHOUSE}/hud-0.6.21-*.whl"))
    return tag


@pytest.fixture(scope="module")
def tools_image() -> str:
    return _build(TOOLS_DIR, TOOLS_TAG)


@pytest.mark.timeout(900)
def test_hud_tools_env_image_gives_the_same_rewards_as_local(ray_local, tools_image, tmp_path,
                                                             run_id):
    """The directory itself as the image (`image=DIR`): built at plan time, wheelhouse and
    all, no `hud-ray image build` needed (its layers are the tools_image's, cached)."""
    tasks = tmp_path / "tools.jsonl"
    tasks.write_text("".join(json.dumps({"env": "tools", **row}) + "\n" for row in ROWS))
    env = _ray_env(ray_local)
    # No command option: the image's hud-ray.command label says how hud's server starts.
    dir_tag = imagedir.default_tag(TOOLS_DIR, {"BASE_IMAGE": BASE_IMAGE})
    try:
        docker = _run(tasks, tmp_path / "docker", run_id, env, "--provider", "docker",
                      "--provider-opt", f"image={TOOLS_DIR}",
                      "--provider-opt", f'build_args={{"BASE_IMAGE": "{BASE_IMAGE}"}}')
    finally:
        daemon().request("DELETE", f"/images/{urllib.parse.quote(dir_tag, safe='')}")
    local = _run(tasks, tmp_path / "local", f"{run_id}-local", env, "--provider", "local",
                 "--provider-opt", f"env_file={TOOLS_DIR / 'env.py'}")

    assert len(docker) == len(ROWS)
    for key, row in docker.items():
        assert row["status"] == "ok", (key, row["error_message"])
        assert row["provider"] == "docker"
        assert row["reward"] == local[key]["reward"], (key, row["reward"], local[key]["reward"])
    assert sorted(r["reward"] for r in docker.values()) == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert any('"name": "lookup"' in r["steps"] for r in docker.values())  # an MCP tool call
    assert containers({LABEL_RUN: run_id}) == []


def _hud_agent_on_docker_and_local(tasks: Path, image: str, tmp_path: Path, run_id: str,
                                   ray_local) -> tuple[dict, dict, dict, dict]:
    """hud's OpenAIChatAgent against the scripted model: docker rows, local rows, and the
    tool calls each made."""
    from tests.fakes.hud_envs.policy import policy
    from tests.fakes.openai_server import ScriptedModel

    env = {**_ray_env(ray_local), KEY_VAR: "sk-scripted-not-a-secret",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                         if p)}
    with ScriptedModel(policy) as model:
        agent_opts = ["--agent-opt", "model=scripted-1", "--agent-opt",
                      f"base_url={model.base_url}", "--agent-opt", f"api_key_env={KEY_VAR}"]
        docker = _run(tasks, tmp_path / "docker", run_id, env, "--provider", "docker",
                      "--provider-opt", f"image={image}", *agent_opts, agent=OPENAI_CHAT)
        docker_calls = model.tool_calls()
        model.conversations.clear()
        local = _run(tasks, tmp_path / "local", f"{run_id}-local", env, *agent_opts,
                     agent=OPENAI_CHAT)
        local_calls = model.tool_calls()
    return docker, local, docker_calls, local_calls


@pytest.mark.timeout(900)
def test_hud_openai_chat_agent_on_the_image_matches_local_call_for_call(ray_local, tools_image,
                                                                         tmp_path, run_id):
    """hud's own OpenAIChatAgent (`hud:` agent) against a scripted model on 127.0.0.1, on the
    tools env's tasks.py (MCP tools over several turns, a `returns=` answer, an agent-less
    verifier): the same reward per row and the same tool calls in docker as on local."""
    docker, local, docker_calls, local_calls = _hud_agent_on_docker_and_local(
        TOOLS_DIR / "tasks.py", tools_image, tmp_path, run_id, ray_local)
    assert len(docker) == 6 and set(docker) == set(local)
    for key, row in docker.items():
        assert row["status"] == "ok", (key, row["error_message"])
        assert row["reward"] == local[key]["reward"], (key, row["reward"], local[key]["reward"])
    assert {r["provider"] for r in docker.values()} == {"docker"}
    assert {r["provider"] for r in local.values()} == {"local"}
    assert docker_calls == local_calls and len(docker_calls) >= 5  # several turns of MCP calls
    assert containers({LABEL_RUN: run_id}) == []


@pytest.mark.timeout(900)
def test_ssh_workspace_image_with_the_bash_tool_matches_local(ray_local, tmp_path, run_id):
    """The workspace env (hud's ssh workspace, driven with the `bash` tool) as an image: the
    agent's shell runs in the container, and the grade reads the file it wrote there."""
    image = _build(WORKSPACE_DIR, WORKSPACE_TAG)
    docker, local, docker_calls, local_calls = _hud_agent_on_docker_and_local(
        WORKSPACE_DIR / "tasks.py", image, tmp_path, run_id, ray_local)
    assert len(docker) == 3 and set(docker) == set(local)
    for key, row in docker.items():
        assert row["status"] == "ok", (key, row["error_message"])
        assert row["reward"] == local[key]["reward"] == 1.0, (key, row, local[key])
    assert docker_calls == local_calls and all(c[0][0] == "bash" for c in docker_calls.values())
    assert containers({LABEL_RUN: run_id}) == []
