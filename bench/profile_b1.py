"""CPU per rollout of B1's full path, by component: `python -m bench.profile_b1 [N]`.

Runs N zero-work sim rollouts through `plan_run` (as B1 does) and, over the middle of the
run, samples the driver and every rollout worker with py-spy (`pip install py-spy`) while
reading each process's CPU time. A sample is charged to the innermost frame that names a
component (table below); the Python samples of a process are its interpreter's time, the
rest of its CPU time is native threads (Ray's core worker: task submission, object
transfer). CPU per rollout = CPU in the window / rollouts finished in the window.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import ray

from .workloads import sim_tasks, zero_work

RATE_HZ = 200
# (substring of a frame's file, component); the innermost matching frame wins.
COMPONENTS = (
    ("providers/sim/server", "sim env server (the sandbox's side)"),
    ("providers/sim/", "provider (sim create/ready/destroy)"),
    ("hud_ray/wire", "worker wire (client)"),
    ("hud_ray/runner/row", "worker row building"),
    ("hud_ray/schema", "worker row building"),
    ("hud_ray/trajectory", "worker row building"),
    ("hud_ray/metrics", "worker bookkeeping"),
    ("hud_ray/runner/", "worker bookkeeping"),
    ("hud_ray/rollout", "worker bookkeeping"),
    ("hud_ray/governor", "governor client"),
    ("hud_ray/worker", "result shipping (step)"),
    ("hud_ray/results", "writer"),
    ("pyarrow", "writer"),
    ("hud_ray/scheduling/outcomes", "driver"),
    ("hud_ray/scheduling/", "driver"),
    ("hud_ray/scheduler", "driver"),
    ("hud_ray/inflight", "driver"),
    ("hud_ray/tasks", "driver (task stream)"),
    ("hud_ray/progress", "driver"),
    ("ray/", "Ray (python side)"),
    ("pydantic", "pydantic"),
    ("asyncio/", "event loop + sockets"),
)


def component(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for needle, name in COMPONENTS:
            if needle in frame:
                return name
    return "other python"


def _spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", str(RATE_HZ), "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _samples(path: Path) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[component(stack)] += int(n)
    return counts


def _cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            out[pid] = 0.0
    return out


def profile(n: int, slots: int = 512, window_s: float = 8.0, **kwargs: Any) -> dict[str, Any]:
    from hud_ray.api import plan_run

    os.environ.setdefault("HUD_RAY_STATE_DIR", tempfile.mkdtemp(prefix="hud-ray-prof-"))
    out = Path(tempfile.mkdtemp(prefix="hud-ray-prof-runs-"))
    options = {**zero_work(), "account": f"prof-{uuid.uuid4().hex[:8]}"}
    plan = plan_run(sim_tasks(n), "nop", "sim", concurrency=slots, out=out, run_id="prof",
                    progress=False, provider_options=options, **kwargs)
    sched = plan.scheduler
    result: dict[str, Any] = {}

    def sample() -> None:
        while len(sched.workers) == 0 or sched._finished < n // 5:
            time.sleep(0.05)
        pids = {"driver": os.getpid()}
        for w in sched.workers:
            pids[f"worker {w.index}"] = ray.get(w.actor.ping.remote())["pid"]
        others = {p.pid: p.name() for p in psutil.Process().children(recursive=True)
                  if p.pid not in pids.values()}
        tmp = Path(tempfile.mkdtemp(prefix="hud-ray-spy-"))
        done0, cpu0, t0 = sched._finished, _cpu(list(pids.values())), time.monotonic()
        other0 = _cpu(list(others))
        spies = {name: _spy(pid, window_s, tmp / f"{pid}.txt") for name, pid in pids.items()}
        for spy in spies.values():
            spy.wait()
        cpu1, done1 = _cpu(list(pids.values())), sched._finished
        other1 = _cpu(list(others))
        result.update(window_s=time.monotonic() - t0, rollouts=done1 - done0)
        # Ray's own processes (raylet, GCS, agents, the governor actor): not sampled, but
        # their CPU is part of the full path's cost.
        by_name: collections.Counter[str] = collections.Counter()
        for pid, name in others.items():
            by_name[name] += other1.get(pid, 0.0) - other0.get(pid, 0.0)
        result["other_processes_cpu_s"] = dict(by_name.most_common())
        for name, pid in pids.items():
            counts = _samples(tmp / f"{pid}.txt")
            result[name] = {"cpu_s": cpu1[pid] - cpu0[pid], "samples": dict(counts)}

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    for _ in plan.stream():
        pass
    result["rate"] = n / (time.perf_counter() - t0)
    thread.join(timeout=60)
    return result


def breakdown(result: dict[str, Any]) -> dict[str, float]:
    """ms of CPU per rollout by component, over every sampled process."""
    per: collections.Counter[str] = collections.Counter()
    k = max(1, result["rollouts"])
    for name, cpu_s in result.get("other_processes_cpu_s", {}).items():
        per[f"other process: {name}"] += 1000 * cpu_s / k
    for name, proc in result.items():
        if not isinstance(proc, dict) or "samples" not in proc:
            continue
        python_s = sum(proc["samples"].values()) / RATE_HZ
        scale = min(1.0, proc["cpu_s"] / python_s) if python_s else 0.0
        for comp, count in proc["samples"].items():
            label = comp if name != "driver" or comp.startswith(("driver", "writer")) \
                else f"driver: {comp}"
            per[label] += 1000 * count / RATE_HZ * scale / k
        native = max(0.0, proc["cpu_s"] - python_s)
        per[f"{'driver' if name == 'driver' else 'worker'}: native threads (Ray core)"] += \
            1000 * native / k
    return dict(per.most_common())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    result = profile(n)
    rows = breakdown(result)
    total = sum(rows.values())
    print(f"{n} rollouts, {result['rate']:.0f}/s overall; window {result['window_s']:.1f} s, "
          f"{result['rollouts']} rollouts in it")
    for name, proc in result.items():
        if isinstance(proc, dict) and "cpu_s" in proc:
            print(f"  {name}: {1000 * proc['cpu_s'] / max(1, result['rollouts']):.3f} ms CPU "
                  "per rollout")
    print("| component | CPU ms per rollout | share |\n|---|---|---|")
    for comp, ms in rows.items():
        print(f"| {comp} | {ms:.3f} | {ms / total:.0%} |")
    print(f"| total (sampled processes) | {total:.3f} | |")


if __name__ == "__main__":
    main()
