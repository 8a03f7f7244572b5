"""The docker provider through the user's path: `hud-ray image build`, `hud-ray run` and
`run_distributed()` on Ray workers, `hud-ray reap` — on the real Docker daemon. Skipped,
with the reason, only when no daemon answers (CI starts one)."""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from hud_ray.api import run_distributed
from hud_ray.results import read_results
from providers import LABEL_RUN
from tests.fakes.docker_daemon import (
    BASE_IMAGE,
    DEMO_TAG,
    containers,
    demo_image,
    remove_all,
    require_daemon,
)

from .conftest import REPO, cli, kill_tree, wait_for

DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"
SLOW_AGENT = f"{REPO / 'tests/fakes/agents.py'}:slow_rule_agent"


@pytest.fixture
def run_id():
    run = f"dkr-{uuid.uuid4().hex[:8]}"
    yield run
    remove_all({LABEL_RUN: run})


def _ray_env(ray_local) -> dict[str, str]:
    return {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
            "HUD_RAY_STATE_DIR": os.environ["HUD_RAY_STATE_DIR"]}


def _rewards(table) -> dict[str, float | None]:
    return dict(zip(table.column("rollout_key").to_pylist(), table.column("reward").to_pylist(),
                    strict=True))


@pytest.mark.timeout(400)
def test_image_build_then_run_240_rollouts_same_rewards_as_local(ray_local, tmp_path, run_id):
    require_daemon()
    build = cli("image", "build", "examples/demo", "--tag", DEMO_TAG,
                "--build-arg", f"BASE_IMAGE={BASE_IMAGE}")
    stdout, stderr = build.communicate(timeout=300)
    assert build.returncode == 0, stderr[-2000:]
    assert stdout.strip().splitlines()[-1] == DEMO_TAG
    out = tmp_path / "runs"
    run = cli("run", str(DEMO_TASKS), "--agent", "rule", "--provider", "docker",
              "--provider-opt", f"image={DEMO_TAG}", "--concurrency", "8", "--out", str(out),
              "--run-id", run_id, "--no-progress", env=_ray_env(ray_local))
    try:
        stdout, stderr = run.communicate(timeout=300)
    finally:
        kill_tree(run)
    assert run.returncode == 0, stderr[-3000:]
    docker = read_results(out / run_id)
    assert docker.num_rows == 240
    assert set(docker.column("status").to_pylist()) == {"ok"}
    assert set(docker.column("provider").to_pylist()) == {"docker"}
    local = run_distributed(DEMO_TASKS, "rule", provider="local", concurrency=8,
                            out=tmp_path / "local", progress=False)
    assert _rewards(docker) == _rewards(local)
    assert containers({LABEL_RUN: run_id}) == []


@pytest.mark.timeout(300)
def test_a_container_killed_mid_rollout_is_retried_in_a_new_one(ray_local, tmp_path, run_id):
    image = demo_image()
    lines = DEMO_TASKS.read_text().splitlines()[:12]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(lines) + "\n")
    table = run_distributed(tasks, "tests.fakes.docker_daemon:kill_first_attempt",
                            provider="docker", image=image, concurrency=4, warm=0,
                            retry_backoff_s=0.1, run_id=run_id, out=tmp_path / "runs",
                            progress=False)
    rows = table.to_pylist()
    assert len(rows) == 12
    assert {r["status"] for r in rows} == {"ok"}, [r["error_message"] for r in rows]
    assert {r["attempts"] for r in rows} == {2}  # each first container was killed
    assert containers({LABEL_RUN: run_id}) == []


@pytest.mark.timeout(300)
def test_driver_sigkill_leaves_labelled_containers_and_reap_removes_them(tmp_path, run_id):
    image = demo_image()
    out = tmp_path / "runs"
    # A Ray of its own (RAY_ADDRESS=local), never the session's: the SIGKILL must take the
    # workers and the governor's reaper down with the driver, or they clean up first.
    env = {"HUD_RAY_STATE_DIR": str(tmp_path / "state"), "RAY_ADDRESS": "local"}
    driver = cli("run", str(DEMO_TASKS), "--agent", SLOW_AGENT, "--provider", "docker",
                 "--provider-opt", f"image={image}", "--concurrency", "8", "--out", str(out),
                 "--run-id", run_id, "--no-progress", env=env)
    try:
        wait_for(lambda: len(containers({LABEL_RUN: run_id})) >= 4, 120,
                 "containers in flight")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        kill_tree(driver)
    left = containers({LABEL_RUN: run_id})
    assert left, "a SIGKILLed driver should leave its containers behind"
    reap = cli("reap", "--provider", "docker", "--run-id", run_id, env=env)
    stdout, stderr = reap.communicate(timeout=120)
    assert reap.returncode == 0, stderr
    assert "destroyed" in stdout.splitlines()[-1]
    assert containers({LABEL_RUN: run_id}) == []
