"""Warm-ahead: cold start leaves the critical path, and no warm sandbox outlives the run."""

from __future__ import annotations

import json
import uuid

from hud_ray.api import run_distributed
from providers.sim import sim_stats


def test_warm_ahead_hides_cold_start_and_cleans_up(ray_local, tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(32)))
    account = f"warm-{uuid.uuid4().hex[:6]}"
    table = run_distributed(tasks, "nop", provider="sim", concurrency=4, workers=1,
                            out=tmp_path / "runs", progress=False, warm=1,
                            account=account, cold_start_s="0.5", duration_s="0.4")
    rows = table.to_pylist()
    assert len(rows) == 32 and all(r["status"] == "ok" for r in rows)
    warm = [r for r in rows if r["provision_s"] == 0.0]
    # Only the first wave (one per slot) pays the cold start.
    assert len(warm) >= 32 - 4 - 2, [(r["provision_s"], r["ready_s"]) for r in rows]
    assert all(r["ready_s"] < 0.3 for r in warm)
    stats = sim_stats(account)
    assert stats["live"] == 0, stats
    assert stats["creates"] <= 32 + 4 + 4  # at most one spare per slot beyond the cold wave


def test_cold_without_warm(ray_local, tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(8)))
    table = run_distributed(tasks, "nop", provider="sim", concurrency=4, workers=1,
                            out=tmp_path / "runs", progress=False, warm=0,
                            account=f"cold-{uuid.uuid4().hex[:6]}", cold_start_s="0.3")
    assert all(r["provision_s"] > 0 and r["ready_s"] >= 0.25 for r in table.to_pylist())



def test_scheduler_prefers_rollouts_matching_a_workers_warm_kind(tmp_path):
    """Unit level (no Ray): with mixed sandbox kinds, a worker reporting warm kind-b
    sandboxes gets kind-b rollouts first; the others keep their order."""
    from hud_ray.inflight import WorkerSlot
    from hud_ray.results import ResultWriter
    from hud_ray.scheduler import Scheduler, SchedulerConfig
    from hud_ray.tasks import expand, tasks_from
    from hud_ray.warm import spec_key
    from providers import get_provider

    rows = [{"env": "ab"[i % 2], "id": "t", "args": {"i": i}} for i in range(12)]
    rollouts = expand(tasks_from(rows))
    config = SchedulerConfig(run_id="u", provider="sim", agent="nop", concurrency=4,
                             warm_per_slot=1.0, probe_first=False)
    sink = ResultWriter(tmp_path / "u", config={})
    scheduler = Scheduler(config, rollouts, sink, get_provider("sim"))
    first = scheduler._take(2, WorkerSlot(0, None, 2, "w0"))  # no warm: plain order
    assert [r.task.env for r, _ in first] == ["a", "b"]
    kind_b = spec_key(first[1][0])
    picked = scheduler._take(3, WorkerSlot(1, None, 3, "w1", warm={kind_b: 2}))
    assert [r.task.env for r, _ in picked] == ["b", "b", "a"]
    assert [r.task.args["i"] for r, _ in picked] == [3, 5, 2]
    rest = scheduler._take(20, WorkerSlot(2, None, 20, "w2"))
    assert [r.task.args["i"] for r, _ in rest] == [4, 6, 7, 8, 9, 10, 11]


def test_a_kept_worker_names_its_warm_sandboxes_anew_in_each_run(ray_local, tmp_path):
    """A second run on the same kept worker must not reuse the first run's warm sandbox
    names: the sim draws each sandbox's fate (work time, failures) from its name, so a
    reused name replayed one run's draws in every later run (B9's synchronous loop met
    the same 20 s rollout at every step), and a real provider would meet old names."""
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(12)))
    account = f"names-{uuid.uuid4().hex[:6]}"
    runs = [run_distributed(tasks, "nop", provider="sim", concurrency=2, workers=1,
                            out=tmp_path / "runs", run_id=run_id, progress=False, warm=1,
                            account=account, cold_start_s="0.2", duration_s="0.05"
                            ).to_pylist() for run_id in ("first", "second")]
    assert runs[0][0]["worker_id"] == runs[1][0]["worker_id"], "the worker was kept"
    warm = [{r["sandbox_id"] for r in rows if r["provision_s"] == 0.0} for rows in runs]
    assert warm[0] and warm[1], "both runs used warm sandboxes"
    assert not warm[0] & warm[1]
    assert sim_stats(account)["live"] == 0
