"""Core II end to end: a real local Ray cluster, real env-server subprocesses."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hud_ray.api import plan_run, run_distributed, stream_distributed
from hud_ray.results import read_manifest, read_results

from .conftest import REPO, cli, env_server_pids, kill_tree, wait_for

DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"
SOLVED = {"count", "arith", "reverse", "sort", "kv_lookup"}


def _first_rows(n: int, tmp_path: Path) -> Path:
    lines = DEMO_TASKS.read_text().splitlines()[:n]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


SLOW_AGENT = f"{REPO / 'tests/fakes/agents.py'}:slow_rule_agent"
ENV = {"env_file": str(REPO / "examples/demo/env.py")}


def test_run_distributed_matches_parquet_and_rewards(ray_local, tmp_path):
    tasks = _first_rows(60, tmp_path)
    table = run_distributed(tasks, "rule", provider="local", concurrency=8, workers=2,
                            repeats=2, out=tmp_path / "runs", progress=False,
                            flush_rows=16, **ENV)
    assert table.num_rows == 120
    keys = table.column("rollout_key").to_pylist()
    assert len(set(keys)) == 120
    run_dir = Path(table.schema.metadata[b"hud_ray.run_dir"].decode())
    on_disk = read_results(run_dir)
    assert sorted(on_disk.column("rollout_key").to_pylist()) == sorted(keys)
    rows = table.to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        assert row["reward"] == (1.0 if row["template_id"] in SOLVED else 0.0), row
    assert len({r["worker_id"] for r in rows}) == 2
    # repeats share a group id; every part file is readable without hud_ray
    groups = Counter(r["group_id"] for r in rows)
    assert set(groups.values()) == {2}
    for part in (run_dir / "rollouts").glob("*.parquet"):
        pq.read_table(part)
    manifest = read_manifest(run_dir)
    assert manifest["state"] == "finished" and manifest["counts"] == {"ok": 120}


def test_stream_yields_first_batch_before_the_run_ends(ray_local, tmp_path):
    tasks = _first_rows(100, tmp_path)
    stream = stream_distributed(tasks, SLOW_AGENT, provider="local", concurrency=8,
                                workers=2, out=tmp_path / "runs", run_id="stream",
                                progress=False, flush_rows=4, flush_s=0.2, **ENV)
    first = next(stream)
    manifest = read_manifest(tmp_path / "runs" / "stream")
    assert first.num_rows >= 1
    assert manifest["state"] == "running"
    assert sum(manifest["counts"].values()) < 100
    total = first.num_rows + sum(b.num_rows for b in stream)
    assert total == 100


def test_worker_sigkill_rollouts_retried(ray_local, tmp_path):
    import ray

    tasks = _first_rows(48, tmp_path)
    plan = plan_run(tasks, SLOW_AGENT, provider="local", concurrency=8, workers=2,
                    out=tmp_path / "runs", progress=False, flush_rows=4,
                    retry_backoff_s=0.1, **ENV)
    stream = plan.stream()
    next(stream)
    victim = plan.scheduler.workers[0]
    assert victim.inflight, "the victim worker should have rollouts in flight"
    in_flight = set(victim.inflight)
    pid = ray.get(victim.actor.ping.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    for _ in stream:
        pass
    table = read_results(plan.run_dir)
    rows = {r["rollout_key"]: r for r in table.to_pylist()}
    assert len(rows) == 48 and table.num_rows == 48
    assert all(r["status"] == "ok" for r in rows.values())
    retried = {k for k, r in rows.items() if r["attempts"] > 1}
    assert in_flight <= retried
    assert plan.scheduler._replacements == 1


def test_driver_sigkill_then_reap_and_resume(tmp_path):
    state = tmp_path / "state"
    env = {"HUD_RAY_STATE_DIR": str(state)}
    out = tmp_path / "runs"
    args = ["run", str(DEMO_TASKS), "--agent", SLOW_AGENT,
            "--concurrency", "8", "--out", str(out), "--run-id", "r1", "--no-progress"]
    driver = cli(*args, env=env)
    try:
        wait_for(lambda: list((out / "r1" / "rollouts").glob("part-*.parquet")), 120,
                 "the first Parquet part")
        wait_for(lambda: env_server_pids(state), 30, "env servers in flight")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        kill_tree(driver)
    before = read_results(out / "r1").num_rows
    assert 0 < before < 240
    leftover = env_server_pids(state)
    reap = cli("reap", "--provider", "local", "--run-id", "r1", env=env)
    stdout, stderr = reap.communicate(timeout=120)
    assert reap.returncode == 0, stderr
    wait_for(lambda: not (env_server_pids(state) & leftover), 60, "reaped env servers to exit")
    resume = cli(*args, "--resume", env=env)
    stdout, stderr = resume.communicate(timeout=600)
    assert resume.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == str((out / "r1").resolve())
    keys = read_results(out / "r1").column("rollout_key").to_pylist()
    assert len(keys) == 240 and len(set(keys)) == 240
    assert not env_server_pids(state)


def test_demo_command(tmp_path):
    proc = cli("demo", "--concurrency", "16", "--no-progress", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    run_dir = Path(stdout.strip().splitlines()[-1])
    assert run_dir.is_dir() and "mean reward" in stdout
    table = read_results(run_dir)
    assert table.num_rows >= 200
    keys = table.column("rollout_key").to_pylist()
    assert len(set(keys)) == len(keys)
    for row in table.to_pylist():
        assert row["reward"] == (1.0 if row["template_id"] in SOLVED else 0.0)


@pytest.mark.slow
def test_driver_memory_flat_on_a_million_rows(tmp_path):
    big = tmp_path / "million.jsonl"
    row = json.loads(DEMO_TASKS.read_text().splitlines()[0])
    with big.open("w") as fh:
        for i in range(1_000_000):
            row["slug"] = f"count-{i}"
            fh.write(json.dumps(row) + "\n")
    out = tmp_path / "runs"
    driver = cli("run", str(big), "--agent", "rule", "--concurrency", "8", "--out", str(out),
                 "--run-id", "big", "--no-progress", "--provider-opt",
                 f"env_file={REPO / 'examples/demo/env.py'}")
    peak_kb = 0
    try:
        def enough() -> bool:
            nonlocal peak_kb
            if driver.poll() is not None:  # fail now, with its words, not after the wait
                raise AssertionError(f"driver exited ({driver.returncode}) early: "
                                     f"{driver.stderr.read()[-3000:]}")
            peak_kb = max(peak_kb, _vm_hwm_kb(driver.pid))
            try:
                return sum(read_manifest(out / "big").get("counts", {}).values()) >= 300
            except Exception:
                return False

        wait_for(enough, 300, "300 rollouts written")
        peak_kb = max(peak_kb, _vm_hwm_kb(driver.pid))
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=120)
    finally:
        kill_tree(driver)
    print(f"driver peak RSS on a 1,000,000-row task file: {peak_kb / 1024:.0f} MiB")
    # The file is ~160 MB; holding it (or its tasks) would cost far more than this.
    assert 0 < peak_kb < 320 * 1024, f"driver peak RSS {peak_kb / 1024:.0f} MiB"


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_ctrl_c_tears_down_in_flight_sandboxes(ray_local, tmp_path):
    tasks = _first_rows(40, tmp_path)
    plan = plan_run(tasks, SLOW_AGENT, provider="local", concurrency=8, workers=2,
                    out=tmp_path / "runs", progress=False, flush_rows=4, **ENV)
    stream = plan.stream()
    next(stream)
    state = Path(os.environ["HUD_RAY_STATE_DIR"])
    assert env_server_pids(state)

    with pytest.raises(KeyboardInterrupt):
        stream.throw(KeyboardInterrupt)
    wait_for(lambda: not env_server_pids(state, zygotes=False), 30,
             "in-flight env servers to be torn down")
    assert read_manifest(plan.run_dir)["state"] == "interrupted"
