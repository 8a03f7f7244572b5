"""Workers kept across runs (hud_ray.pool), through run_distributed on a real local Ray."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import psutil
import pytest

import hud_ray
from hud_ray.api import plan_run, run_distributed
from hud_ray.pool import worker_pool

from .conftest import REPO, env_server_pids, wait_for

DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"
ENV = {"env_file": str(REPO / "examples/demo/env.py")}
SLOW_AGENT = f"{REPO / 'tests/fakes/agents.py'}:slow_rule_agent"


def _tasks(n: int, tmp_path: Path) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(DEMO_TASKS.read_text().splitlines()[:n]) + "\n")
    return path


def _run(tasks: Path, out: Path, run_id: str, agent: str = "rule", **options):
    return run_distributed(tasks, agent, provider="local", concurrency=4, workers=2,
                           out=out, run_id=run_id, progress=False, **{**ENV, **options})


def _idle_pids() -> dict[str, int]:
    """worker id -> pid of every idle kept worker (asked over Ray: they are alive)."""
    import ray

    pool = worker_pool()
    with pool._lock:
        actors = [k.actor for k in pool._idle]
    return {info["worker_id"]: info["pid"] for info in ray.get([a.ping.remote() for a in actors])}


def _ledger(state: Path) -> list[Path]:
    return sorted((state / "local").glob("*.json"))


def test_second_run_reuses_workers_then_shutdown_ends_them(ray_local, tmp_path,
                                                           _isolated_state):
    tasks = _tasks(8, tmp_path)
    first = _run(tasks, tmp_path / "runs", "one").to_pylist()
    kept = _idle_pids()
    assert len(kept) == 2
    assert {r["worker_id"] for r in first} == set(kept)
    assert _ledger(_isolated_state) == []  # a kept worker holds no sandbox between runs
    zygotes = env_server_pids(_isolated_state)
    assert zygotes, "the local provider's zygote lives on in the kept worker"

    second = _run(tasks, tmp_path / "runs", "two").to_pylist()
    # The same actors, the same processes, serving the new run and nothing of the old.
    assert {r["worker_id"] for r in second} == set(kept)
    assert _idle_pids() == kept
    assert {r["run_id"] for r in second} == {"two"}
    assert {r["status"] for r in first + second} == {"ok"}
    assert {r["reward"] for r in second} == {r["reward"] for r in first}
    assert env_server_pids(_isolated_state) == zygotes  # its zygote too: no env re-import

    # Another provider configuration never gets them.
    other = _run(tasks, tmp_path / "runs", "three", zygote=False).to_pylist()
    assert not {r["worker_id"] for r in other} & set(kept)
    assert worker_pool().idle_count() == 4

    assert hud_ray.shutdown() == 4
    assert worker_pool().idle_count() == 0
    for pid in kept.values():
        wait_for(lambda pid=pid: not psutil.pid_exists(pid), 30, f"worker pid {pid} to end")
    wait_for(lambda: not env_server_pids(_isolated_state), 30, "the zygotes to end")
    assert _ledger(_isolated_state) == []


def test_idle_timeout_ends_kept_workers(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("HUD_RAY_KEEP_WORKERS_S", "1")
    _run(_tasks(4, tmp_path), tmp_path / "runs", "idle")
    pids = _idle_pids()
    assert len(pids) == 2
    for pid in pids.values():
        wait_for(lambda pid=pid: not psutil.pid_exists(pid), 30, f"idle worker {pid} to end")
    assert worker_pool().idle_count() == 0


def test_keep_zero_ends_workers_with_the_run(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("HUD_RAY_KEEP_WORKERS_S", "0")
    _run(_tasks(4, tmp_path), tmp_path / "runs", "nokeep")
    assert worker_pool().idle_count() == 0


def test_bad_keep_setting_named_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HUD_RAY_KEEP_WORKERS_S", "ten")
    with pytest.raises(ValueError, match="HUD_RAY_KEEP_WORKERS_S='ten'"):
        plan_run(_tasks(2, tmp_path), "rule", provider="local", out=tmp_path / "runs",
                 progress=False, **ENV)
    assert not (tmp_path / "runs").exists()


def test_worker_dead_while_idle_is_replaced(ray_local, tmp_path):
    tasks = _tasks(4, tmp_path)
    _run(tasks, tmp_path / "runs", "a")
    pids = _idle_pids()
    victim_id, victim_pid = next(iter(pids.items()))
    os.kill(victim_pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(victim_pid), 30, "the killed worker to be gone")
    created = worker_pool().created
    rows = _run(tasks, tmp_path / "runs", "b").to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    used = {r["worker_id"] for r in rows}
    assert victim_id not in used
    assert used - {victim_id} and worker_pool().created == created + 1


def test_interrupted_run_leaves_clean_workers(ray_local, tmp_path, _isolated_state):
    tasks = _tasks(40, tmp_path)
    plan = plan_run(tasks, SLOW_AGENT, provider="local", concurrency=4, workers=2,
                    out=tmp_path / "runs", run_id="cut", progress=False, flush_rows=1,
                    flush_s=0.0, **ENV)
    stream = plan.stream()
    next(stream)  # some rows are in; the rest are running
    stream.close()  # the caller stops: the run is interrupted, its rollouts cancelled
    kept = _idle_pids()
    assert len(kept) == 2  # clean: nothing running, no warm sandbox
    assert _ledger(_isolated_state) == []
    rows = _run(_tasks(4, tmp_path), tmp_path / "runs", "after").to_pylist()
    assert {r["worker_id"] for r in rows} <= set(kept)
    assert {r["status"] for r in rows} == {"ok"} and {r["run_id"] for r in rows} == {"after"}


def test_two_runs_at_once_get_their_own_workers(ray_local, tmp_path):
    tasks = _tasks(8, tmp_path)
    _run(tasks, tmp_path / "runs", "warmup")
    results: dict[str, set[str]] = {}

    def go(run_id: str) -> None:
        rows = _run(tasks, tmp_path / "runs", run_id, agent=SLOW_AGENT).to_pylist()
        results[run_id] = {r["worker_id"] for r in rows}

    threads = [threading.Thread(target=go, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(results) == {"left", "right"}
    assert not results["left"] & results["right"]  # a worker is lent to one run at a time
    assert worker_pool().idle_count() == 4


BLOCKING = f"{REPO / 'tests/fakes/agents.py'}:blocking_agent"


def test_a_worker_killed_mid_run_is_never_kept(ray_local, tmp_path):
    import json

    rows = [json.loads(line) for line in DEMO_TASKS.read_text().splitlines()]
    riddle = next(r for r in rows if r["id"] == "riddle")
    other = next(r for r in rows if r["id"] == "count")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(other) + "\n" + json.dumps(riddle) + "\n")
    # The riddle blocks its worker's loop: the scheduler kills that worker at the deadline.
    table = run_distributed(tasks, BLOCKING, provider="local", concurrency=2, workers=1,
                            out=tmp_path / "runs", progress=False, timeout_s=3.0,
                            retry_backoff_s=0.1, warm=0, **ENV)
    by_template = {r["template_id"]: r for r in table.to_pylist()}
    assert by_template["riddle"]["status"] == "timeout"
    killed = by_template["riddle"]["worker_id"]
    kept = _idle_pids()
    assert killed not in kept and len(kept) == 1  # only its clean replacement
    assert not worker_pool()._lent  # the killed one forgotten, not left lent forever
