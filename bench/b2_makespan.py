"""B2 makespan: heavy-tailed sim rollouts on a fixed number of slots → makespan ÷ lower bound.

d_i = cold start (0.5 s, fixed) + work time (lognormal, median 2 s, sigma 0.6), drawn by
the sim from (seed, sandbox name). Cold contenders (everyone but hud_ray's warm-ahead
default) get identical durations: computed up front with `SimProvider.fate(name)` and
checked against each row's `grade.info.sim_duration_s`. The lower bound of a contender
is max(Σd/N, max d) over the durations its sandboxes actually drew; for warm-ahead,
which overlaps cold starts with work, the stricter c + max(Σw/N, max w) is shown too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .baselines import actor_per_sandbox, hud_style, ray_data
from .common import Bench, Row, loadavg
from .runners import hud_ray_run, statuses
from .workloads import (
    RUN_ID,
    drawn_work_s,
    expected_durations,
    greedy_makespan,
    heavy_tail,
    lower_bound,
    rollouts,
    sim_tasks,
    warm_lower_bound,
)

TARGET_RATIO = 1.02
TARGET_ADVANTAGE = 1.5


def run(out: Path, quick: bool) -> Bench:
    n = 200 if quick else 2000
    slots = 64
    options = heavy_tail()
    tasks = sim_tasks(n)
    rs = rollouts(tasks)
    expected = expected_durations(options, rs)
    cold = [c for c, _ in expected.values()]
    d = [c + w for c, w in expected.values()]
    lb = lower_bound(d, slots)
    bench = Bench("B2", "makespan (heavy-tailed sim rollouts)", "makespan ÷ lower bound",
                  f"hud_ray ≤ {TARGET_RATIO} x LB and ≥ {TARGET_ADVANTAGE}x faster than "
                  "Ray Data and hud-style",
                  params={"rollouts": n, "slots": slots, "sim": options,
                          "sum_d_over_N_s": round(sum(d) / slots, 2),
                          "max_d_s": round(max(d), 2), "lower_bound_s": round(lb, 2)})

    def add(name: str, res: dict[str, Any], load0: float, note: str = "") -> Row:
        rows = res["rows"]
        drawn = drawn_work_s(rows)
        mismatched = sum(1 for k, w in drawn.items()
                         if k not in expected or abs(expected[k][1] - w) > 1e-9)
        own_d = [cold[0] + w for w in drawn.values()]
        own_lb = lower_bound(own_d, slots) if len(own_d) == n else lb
        extra: dict[str, Any] = {"makespan_s": res["wall_s"], "lower_bound_s": own_lb,
                                 "statuses": statuses(rows),
                                 "durations_differing_from_workload": mismatched}
        work = [drawn[r.rollout_key] for r in rs if r.rollout_key in drawn]  # dispatch order
        if mismatched:
            extra["warm_lower_bound_s"] = warm_lower_bound(cold[0], work, slots)
            extra["makespan_over_warm_lb"] = res["wall_s"] / extra["warm_lower_bound_s"]
            # zero-overhead FIFO with every cold start hidden but the first wave's
            ideal = cold[0] + greedy_makespan(work, slots)
        else:
            ideal = greedy_makespan([cold[0] + w for w in work], slots)
        extra["ideal_fifo_s"] = ideal
        extra["makespan_over_ideal_fifo"] = res["wall_s"] / ideal
        started = [r["started_at"] for r in rows if r.get("started_at")]
        finished = [r["finished_at"] for r in rows if r.get("finished_at")]
        if started and finished:
            # first rollout start -> last finish; makespan - span = start-up before the first
            extra["span_s"] = (max(finished) - min(started)).total_seconds()
        for key in ("workers", "actors", "batch_size", "actor_start_s", "driver_cpu_s"):
            if key in res:
                extra[key] = res[key]
        row = Row(name, res["wall_s"] / own_lb, "x LB", extra=extra, note=note,
                  load=(load0, loadavg()))
        bench.rows.append(row)
        return row

    load0 = loadavg()
    res = hud_ray_run(tasks, slots, options, out / "b2" / "hud_ray_cold", warm=0)
    add("hud_ray (warm=0: same durations as baselines)", res, load0,
        note=f"{res['workers']} worker(s); cold start on the critical path like everyone")

    load0 = loadavg()
    res = hud_ray_run(tasks, slots, options, out / "b2" / "hud_ray_warm")
    add("hud_ray (default: warm-ahead)", res, load0,
        note="warm sandboxes draw their own durations; LB from those")

    load0 = loadavg()
    res = hud_style.run(rs, slots, options, out / "b2" / "hud_style", RUN_ID)
    add("hud-style (1 process, semaphore+gather)", res, load0)

    load0 = loadavg()
    res = ray_data.run(rs, slots, options, out / "b2" / "ray_data", RUN_ID)
    add("Ray Data map_batches + ActorPoolStrategy", res, load0,
        note=f"{res['actors']} actors x batch {res['batch_size']}")

    if quick:  # the full run leaves it out: 64 actors start for ≈ 60-80 s on 2 cores, and
        # B2's target names Ray Data and hud-style (B4 shows the actors' start-up cost)
        load0 = loadavg()
        res = actor_per_sandbox.run(rs, slots, options, out / "b2" / "actor_per_sandbox",
                                    RUN_ID)
        add("actor per sandbox + ray.wait", res, load0,
            note=f"{res['actors']} actors; includes {res['actor_start_s']:.1f} s actor start")

    ideal = greedy_makespan(d, slots)
    bench.rows.append(Row("reference: FIFO greedy, zero overhead (computed)", ideal / lb,
                          "x LB", extra={"makespan_s": ideal, "lower_bound_s": lb},
                          note="the best a dispatcher that cannot see durations gets"))

    ours = bench.rows[:2]
    best = min(ours, key=lambda r: r.value)
    for row in bench.rows[2:]:  # >1: hud_ray (its best row) finished sooner
        row.ratio = row.extra["makespan_s"] / best.extra["makespan_s"]
    by_name = {r.contender.split(" ")[0]: r for r in bench.rows}
    advantage = min(by_name["Ray"].extra["makespan_s"], by_name["hud-style"].extra["makespan_s"]
                    ) / best.extra["makespan_s"]
    bench.met = best.value <= TARGET_RATIO and advantage >= TARGET_ADVANTAGE
    bench.verdict = (f"best hud_ray row {best.value:.3f} x LB ({best.contender}); "
                     f"advantage over the better of Ray Data / hud-style: {advantage:.2f}x; "
                     f"zero-overhead FIFO greedy on the same durations: {ideal / lb:.3f} x LB.")
    return bench
