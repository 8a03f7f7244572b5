"""The first-sandbox probe (scheduler, no Ray): one rollout in flight until an env has
answered hello; a first sandbox whose env cannot start stops the run, unwritten."""

from __future__ import annotations

from hud_ray.inflight import Flight, WorkerSlot
from hud_ray.results import ResultWriter
from hud_ray.scheduler import Scheduler, SchedulerConfig
from hud_ray.tasks import expand, tasks_from
from providers import get_provider


def _scheduler(tmp_path, **config):
    rows = [{"env": "e", "id": "t", "args": {"i": i}} for i in range(10)]
    sink = ResultWriter(tmp_path / "run", config={})
    return Scheduler(SchedulerConfig(run_id="u", provider="sim", agent="nop", concurrency=8,
                                     **config), expand(tasks_from(rows)), sink,
                     get_provider("sim")), sink


def _row(key, **fields):
    return {"rollout_key": key, "status": "ok", "error_type": None, "error_message": None,
            "start_s": None, **fields}


def test_one_rollout_until_an_env_said_hello_then_the_window_opens(tmp_path):
    scheduler, _ = _scheduler(tmp_path)
    worker = WorkerSlot(0, None, 8, "w0")
    scheduler.workers.append(worker)
    first = scheduler._take(8, worker)
    assert len(first) == 1
    rollout, attempt = first[0]
    worker.inflight[rollout.rollout_key] = Flight(rollout, attempt, 0.0, 60.0)
    assert scheduler._take(7, worker) == []  # still probing: nothing more
    scheduler._land(_row(rollout.rollout_key, status="infra_error", error_type="CreateError"),
                    None)  # no hello yet: still probing
    assert scheduler._probing
    scheduler._land(_row(rollout.rollout_key, start_s=0.01), None)  # its env answered hello
    assert not scheduler._probing
    worker.inflight.clear()
    assert len(scheduler._take(8, worker)) == 8


def test_a_first_sandbox_whose_env_cannot_start_stops_the_run_unwritten(tmp_path):
    scheduler, sink = _scheduler(tmp_path)
    scheduler._land(_row("t-1#0", status="env_error", error_type="EnvStartError",
                         error_message="env server failed to start: env.py:3: ImportError: x\n"
                                       "last output: ..."), None)
    assert scheduler._abort == ("the env failed to start in the run's first sandbox (t-1#0), "
                                "so no more were started: env server failed to start: env.py:3:"
                                " ImportError: x")
    assert sink._buffer == []


def test_no_probe_fans_out_at_once(tmp_path):
    scheduler, _ = _scheduler(tmp_path, probe_first=False)
    assert len(scheduler._take(8, WorkerSlot(0, None, 8, "w0"))) == 8
