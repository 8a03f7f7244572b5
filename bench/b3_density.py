"""B3 density: many concurrent `sim` sandboxes → memory (USS) per concurrent sandbox.

hud_ray runs `target` rollouts at once whose work takes minutes; once the sim account
reports them all live (each rollout connected and waiting on its grade reply), the USS of
every Ray worker process (`ray::…`, psutil) is summed and the run is stopped. References:
the same in one plain process (hud-style, measured in a child process), and one actor per
sandbox (a handful of actors, per-sandbox cost = USS per actor process).

File descriptors: each in-flight sim rollout holds two sockets in its worker (client and
the in-process sim server's end), so workers x RLIMIT_NOFILE must exceed 2 x target. The
bench raises its soft limit to the hard one before Ray starts (workers inherit it from
the raylet) and spreads the sandboxes over enough workers.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import ray

from hud_ray.api import plan_run
from providers.sim import sim_stats

from .baselines import actor_per_sandbox
from .common import Bench, Poller, Row, loadavg, ray_worker_processes, uss_bytes
from .workloads import rollouts, sim_tasks

TARGET_BYTES = 2**20
MB = 2**20


def _long_work(seed: int) -> dict[str, Any]:
    # flush_s=0: the sim's event log is written per event. With buffering, a provider whose
    # sandboxes all sit idle never flushes its last events, and `sim_stats` undercounts.
    return {"seed": seed, "duration_s": 600.0, "flush_s": 0.0}


def _hud_ray(out: Path, target: int, workers: int) -> dict[str, Any]:
    account = f"density-{uuid.uuid4().hex[:8]}"
    options = {**_long_work(3), "account": account}
    before = sum(uss_bytes(ray_worker_processes()).values())
    plan = plan_run(sim_tasks(target), "nop", "sim", concurrency=target, workers=workers,
                    out=out, run_id="density", progress=False, warm=0, timeout_s=900,
                    provider_options=options)
    seen: dict[str, Any] = {"peak_live": 0}
    t0 = time.perf_counter()

    def sample() -> bool:
        live = sim_stats(account)["live"]
        seen["peak_live"] = max(seen["peak_live"], live)
        waited = time.perf_counter() - t0
        if live >= target or waited > 240:
            time.sleep(1.0)  # every grade call out, every reader task parked
            procs = ray_worker_processes()
            uss = uss_bytes(procs)
            names = {p.pid: " ".join(p.info["cmdline"])[:60] for p in procs}
            seen.update(live=sim_stats(account)["live"], ramp_s=waited, uss=uss, names=names)
            plan.scheduler.stop()
            return True
        return False

    with Poller(sample, every_s=0.5) as poller:
        for _ in plan.stream():
            pass
    if poller.error is not None:
        raise poller.error
    return {**seen, "uss_before_run": before}


def _hud_style(n: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.baselines.hud_style", "density",
                           str(n), json.dumps(_long_work(4))],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"hud-style density probe failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _actors(n: int) -> dict[str, Any]:
    account = f"density-a-{uuid.uuid4().hex[:8]}"
    options = {**_long_work(5), "account": account}
    actors = actor_per_sandbox.start_actors(n, options, "density")
    try:
        pids = ray.get([a.pid.remote() for a in actors])
        refs = [a.run.remote(r) for a, r in zip(actors, rollouts(sim_tasks(n)), strict=True)]
        deadline = time.monotonic() + 120
        while sim_stats(account)["live"] < n and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        uss = uss_bytes([p for p in ray_worker_processes() if p.pid in set(pids)])
        live = sim_stats(account)["live"]
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
    del refs
    return {"live": live, "uss": uss}


def run(out: Path, quick: bool) -> Bench:
    target = 1000 if quick else 10000
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # two sockets per sandbox in a worker, plus headroom for Ray's own descriptors
    workers = max(2, -(-2 * target // max(1, nofile - 2000)))
    bench = Bench("B3", "density (concurrent sim sandboxes)", "USS per concurrent sandbox",
                  "hud_ray ≤ 1 MB per concurrent sandbox",
                  params={"concurrent": target, "workers": workers, "rlimit_nofile": nofile})

    load0 = loadavg()
    res = _hud_ray(out / "b3", target, workers)
    live = res.get("live") or res["peak_live"]
    total = sum(res.get("uss", {}).values())
    hosts = sum(u for pid, u in res.get("uss", {}).items()
                if "RolloutWorker" in res["names"].get(pid, ""))
    ours = Row("hud_ray", total / max(1, live) / MB, "MB", load=(load0, loadavg()),
               note=f"{live:,} live at once on {workers} workers",
               extra={"concurrent": live, "ray_workers_uss_mb": total / MB,
                      "rollout_workers_uss_mb": hosts / MB,
                      "rollout_workers_mb_per_sandbox": hosts / max(1, live) / MB,
                      "ray_processes": len(res.get("uss", {})),
                      "uss_before_run_mb": res["uss_before_run"] / MB,
                      "ramp_s": res.get("ramp_s")})
    bench.rows.append(ours)

    n = min(target, 4000)  # one process holds 2 fds per sandbox under one RLIMIT_NOFILE
    load0 = loadavg()
    hs = _hud_style(n)
    bench.rows.append(Row("hud-style (1 process)", hs["uss_bytes"] / max(1, hs["concurrent"]) / MB,
                          "MB", load=(load0, loadavg()),
                          note=f"{hs['concurrent']:,} concurrent in one process",
                          extra={"concurrent": hs["concurrent"], "uss_mb": hs["uss_bytes"] / MB,
                                 "marginal_mb_per_sandbox":
                                     (hs["uss_bytes"] - hs["base_uss_bytes"])
                                     / max(1, hs["concurrent"]) / MB}))

    k = 8 if quick else 16
    load0 = loadavg()
    ac = _actors(k)
    per = sum(ac["uss"].values()) / max(1, len(ac["uss"])) / MB
    bench.rows.append(Row("actor per sandbox", per, "MB", load=(load0, loadavg()),
                          note=f"{k} actors, {ac['live']} sandboxes live",
                          extra={"actors_measured": len(ac["uss"]), "live": ac["live"]}))

    for row in bench.rows[1:]:
        row.ratio = row.value / ours.value if ours.value else None  # >1: hud_ray leaner
    bench.met = live >= target and ours.value * MB <= TARGET_BYTES
    bench.verdict = (f"{ours.value * 1024:.0f} KiB of Ray-worker USS per concurrent sandbox "
                     f"({live:,} concurrent; rollout-worker processes alone "
                     f"{ours.extra['rollout_workers_mb_per_sandbox'] * 1024:.0f} KiB).")
    if live < target:
        bench.notes.append(f"only {live:,} of {target:,} were live at once within the ramp "
                           "budget")
    return bench
