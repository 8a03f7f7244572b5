"""`ray job submit` against a REAL local Ray head, the way a team uses a cluster.

The working directory is a team's repo in miniature: the demo tasks and env, and an
agent package (`team_agents`) that exists nowhere but there, so it can only be imported
on the workers through Ray's working_dir upload. The job runs `hud-ray run`; the test
reads the Parquet it wrote with plain pyarrow. One head serves the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from .conftest import REPO, VENV_BIN, RayHead, ray_head, wait_until

DEMO = REPO / "examples" / "demo"
DOCS = REPO / "docs" / "cluster.md"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# What a not-yet-ready head answers; anything else is a real error.
NOT_READY = re.compile(r"No available agent|Failed to connect|Connection refused|50[23]")

TEAM_AGENT = '''\
"""A team's agent: lives only in the job's working dir."""
import asyncio
import os

from hud_ray.agents.rule import rule_agent


async def solve(session):
    session.record_step("team", mark=os.environ.get("TEAM_RUN_MARK"),
                        own_file_present=os.path.exists("team_agents/solver.py"),
                        excluded_present=os.path.exists("local_only/notes.txt"))
    return await rule_agent(session)


async def slow_solve(session):
    await asyncio.sleep(1.0)
    return await rule_agent(session)
'''


def docs_excludes() -> list[str]:
    """The `excludes` that docs/cluster.md tells users to pass."""
    found = re.search(r"--runtime-env-json '(\{.*?\})'", DOCS.read_text())
    assert found, "docs/cluster.md lost its --runtime-env-json example"
    return json.loads(found.group(1))["excludes"]


@pytest.fixture(scope="module")
def team_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = tmp_path_factory.mktemp("team-repo")
    (wd / "examples" / "demo").mkdir(parents=True)
    for name in ("tasks.jsonl", "env.py"):
        shutil.copy(DEMO / name, wd / "examples" / "demo" / name)
    (wd / "team_agents").mkdir()
    (wd / "team_agents" / "__init__.py").write_text("")
    (wd / "team_agents" / "solver.py").write_text(TEAM_AGENT)
    # Excluded through runtime_env "excludes": must not reach the cluster.
    (wd / "local_only").mkdir()
    (wd / "local_only" / "notes.txt").write_text("not for the cluster\n")
    return wd


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    tmp = tmp_path_factory.mktemp("head")
    # As cluster.yaml runs it: token auth, sandbox_slots on the node. Each job names its
    # own state dir through runtime_env; this one catches strays.
    with ray_head(tmp, auth_mode="token", extra_env={"HUD_RAY_STATE_DIR": str(tmp / "state")},
                  resources={"sandbox_slots": 64}) as h:
        yield h


def submit(head: RayHead, wd: Path, submission_id: str, runtime_env: dict,
           entrypoint: list[str], ready_timeout_s: float = 60.0) -> None:
    """`ray job submit --no-wait`, retried while the head's job agent is not up yet."""
    args = ["job", "submit", "--address", head.dashboard, "--working-dir", str(wd),
            "--runtime-env-json", json.dumps(runtime_env), "--submission-id", submission_id,
            "--no-wait", "--", *entrypoint]
    last = ""

    def accepted() -> bool:
        nonlocal last
        proc = head.ray_cli(*args, cwd=wd)
        last = proc.stdout + proc.stderr
        if proc.returncode == 0 or "already exists" in last:  # an earlier try got through
            return True
        if not NOT_READY.search(last):
            raise AssertionError(f"ray job submit failed:\n{last[-3000:]}")
        return False

    try:
        wait_until(accepted, ready_timeout_s, "the job agent to accept a job", interval_s=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast answer:\n{last[-2000:]}\nhead log:\n"
                             f"{head.log_tail()}") from None


def finished(head: RayHead, submission_id: str) -> str | None:
    status = head.get(f"/api/jobs/{submission_id}").get("status")
    return status if status in TERMINAL else None


def run_cmd(tasks: str, agent: str, out: Path, run_id: str) -> list[str]:
    return ["hud-ray", "run", tasks, "--agent", agent,
            "--provider-opt", "env_file=examples/demo/env.py", "--concurrency", "8",
            "--out", str(out), "--run-id", run_id, "--no-progress"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ray_job_submit_runs_hud_ray_with_an_agent_from_the_working_dir(
        head, team_repo, tmp_path):
    assert find_spec("team_agents") is None, "team_agents must exist only in the working dir"
    out = tmp_path / "out"  # absolute: the job's cwd is Ray's unpacked copy of the wd
    mark = secrets.token_hex(4)
    runtime_env = {"excludes": [*docs_excludes(), "local_only"],
                   "env_vars": {"TEAM_RUN_MARK": mark,
                                "HUD_RAY_STATE_DIR": os.environ["HUD_RAY_STATE_DIR"]}}
    t0 = time.monotonic()
    submit(head, team_repo, "job1", runtime_env,
           run_cmd("examples/demo/tasks.jsonl", "team_agents.solver:solve", out, "job1"))
    t_submit = time.monotonic() - t0
    status = wait_until(lambda: finished(head, "job1"), 150, "job1 to finish", interval_s=0.5)
    t_job = time.monotonic() - t0
    logs = head.get("/api/jobs/job1/logs").get("logs", "")
    assert status == "SUCCEEDED", f"job {status}:\n{logs[-4000:]}"
    info = head.get("/api/jobs/job1")
    cli_status = head.ray_cli("job", "status", "--address", head.dashboard, "job1")
    assert "succeeded" in (cli_status.stdout + cli_status.stderr).lower()

    # `hud-ray run` prints the run directory on its last line.
    assert logs.strip().splitlines()[-1] == str(out / "job1"), logs[-2000:]
    rows = pq.read_table(out / "job1" / "rollouts").to_pylist()
    assert len(rows) == 240
    assert len({r["rollout_key"] for r in rows}) == 240
    assert {r["status"] for r in rows} == {"ok"}, [r["error_message"] for r in rows][:3]
    assert {r["agent"] for r in rows} == {"team_agents.solver:solve"}
    rewards: dict[str, set[float]] = {}
    for r in rows:
        rewards.setdefault(r["template_id"], set()).add(r["reward"])
    assert rewards.pop("riddle") == {0.0}  # the rule agent cannot solve riddles
    assert rewards == {t: {1.0} for t in ("count", "arith", "reverse", "sort", "kv_lookup")}
    # The driver joined the head's cluster (RAY_ADDRESS) instead of starting its own Ray.
    assert {r["node_id"] for r in rows} == {info["driver_node_id"]}
    # The worker actor asked for its slots in sandbox_slots (the head advertises them).
    actors = head.get("/api/v0/actors?detail=true&limit=1000")["data"]["result"]["result"]
    workers = [a for a in actors if a.get("class_name") == "RolloutWorkerImpl"
               and a.get("job_id") == info["job_id"]]
    assert workers, [a.get("class_name") for a in actors]
    assert [a["required_resources"] for a in workers] == [{"sandbox_slots": 8.0}], workers
    # runtime_env reached the agent: env_vars set, excludes kept out of the upload.
    team_steps = [s for r in rows for s in json.loads(r["steps"]) if s["kind"] == "team"]
    assert len(team_steps) == 240
    assert {s["mark"] for s in team_steps} == {mark}
    assert {s["own_file_present"] for s in team_steps} == {True}  # cwd: the working dir copy
    assert {s["excluded_present"] for s in team_steps} == {False}
    print(f"\njob accepted {t_submit:.1f}s, 240 rollouts done {t_job:.1f}s after submit")


def _job_processes(state: str) -> list[str]:
    """The job's own processes still alive: its driver, env servers, zygotes — anything
    started with its state dir except Ray's worker processes (Ray reuses or reaps those;
    a detached actor such as a governor may outlive a job by design)."""
    left = []
    for proc in psutil.process_iter(["environ", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if (proc.info["environ"] or {}).get("HUD_RAY_STATE_DIR") != state:
                continue
            if cmdline and (cmdline[0].startswith("ray::") or any(
                    arg.endswith("default_worker.py") for arg in cmdline)):
                continue
            left.append(f"{proc.pid} {' '.join(cmdline)[:120]}")
        except (psutil.Error, TypeError):
            continue
    return left


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ray_job_stop_keeps_rows_and_tears_sandboxes_down(head, team_repo, tmp_path):
    from providers import get_provider

    state = os.environ["HUD_RAY_STATE_DIR"]
    provider = get_provider("local", env_file=str(DEMO / "env.py"))
    out = tmp_path / "out"
    submit(head, team_repo, "job2", {"env_vars": {"HUD_RAY_STATE_DIR": state}},
           run_cmd("examples/demo/tasks.jsonl", "team_agents.solver:slow_solve", out, "job2"))
    # Mid-run: sandboxes live in the ledger and some rows already on disk.
    wait_until(lambda: len(asyncio.run(provider.list({}))) >= 4, 90, "live sandboxes")
    wait_until(lambda: list((out / "job2" / "rollouts").glob("*.parquet")), 60,
               "the first Parquet part")
    running = _job_processes(state)
    assert any("hud-ray run" in p for p in running), running  # the filter sees the driver
    stop = head.ray_cli("job", "stop", "--address", head.dashboard, "job2")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert wait_until(lambda: finished(head, "job2"), 60, "job2 to stop") == "STOPPED"

    manifest = json.loads((out / "job2" / "manifest.json").read_text())
    assert manifest["state"] == "interrupted", manifest
    rows = pq.read_table(out / "job2" / "rollouts").to_pylist()
    assert 0 < len(rows) < 240
    assert {r["status"] for r in rows} <= {"ok", "cancelled"}
    # Nothing of the job outlives it: no ledger entry, no driver, env server or zygote.
    wait_until(lambda: not asyncio.run(provider.list({})), 30, "the ledger to empty")
    try:
        wait_until(lambda: not _job_processes(state), 30, "the job's processes to exit")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {_job_processes(state)}") from None


@pytest.mark.slow
def test_a_client_without_the_token_is_refused(head, team_repo):
    submit(head, team_repo, "job0", {}, ["python", "-c", "print('hello')"])  # head ready
    for env in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "0" * 32}):
        client = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH")}
        proc = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--address",
                               head.dashboard, "--no-wait", "--", "python", "-c", "1"],
                              env={**client, **env}, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0
        assert re.search(r"(Missing|Invalid) authentication token", proc.stderr), proc.stderr


def test_repo_as_working_dir_fits_the_upload_cap(tmp_path):
    """`ray job submit --working-dir .` from this repo, with the excludes docs/cluster.md
    gives, packs what Ray would upload: under the 512 MiB cap, without .venv and friends."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, create_package

    excludes = ray_constants.get_runtime_env_default_excludes() + docs_excludes()
    target = tmp_path / "pkg.zip"
    create_package(str(REPO), target, include_gitignore=True, excludes=excludes)
    size = target.stat().st_size
    names = zipfile.ZipFile(target).namelist()
    assert size < GCS_STORAGE_MAX_SIZE, f"{size / 2**20:.0f} MiB"
    assert "hud_ray/cli.py" in names and "examples/demo/tasks.jsonl" in names
    for heavy in (".venv/", ".venv-hud/", ".git/", "runs/", "dist/"):
        assert not any(n.startswith(heavy) for n in names), heavy
