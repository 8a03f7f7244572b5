"""B1 dispatch: zero-work `sim` rollouts through the full path → rollouts/s, driver CPU.

Full path = plan → scheduler → `step` calls → worker → provider create/ready → wire
(hello, start, grade, bye) → destroy → row → Parquet. The sim does no work, so the rate
is the framework's overhead. References in the same run: the baselines on the same
rollouts, and a bare asyncio client doing the same protocol exchange (the ceiling).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .baselines import actor_per_sandbox, hud_style, raw_client, ray_data
from .common import Bench, Row, loadavg
from .runners import hud_ray_run, statuses
from .workloads import RUN_ID, rollouts, sim_tasks, zero_work

TARGET_RATE = 2500.0


def run(out: Path, quick: bool) -> Bench:
    n = 2000 if quick else 20000
    slots = 512
    # one process per sandbox: 512 actors would need ≈ 27 GB (52 MB each) and minutes to
    # start on 2 cores; 16 is what fits, and the row also shows its rate after start-up
    actor_slots = 16
    options = zero_work()
    tasks = sim_tasks(n)
    rs = rollouts(tasks)
    bench = Bench("B1", "dispatch (zero-work sim rollouts, full path)", "rollouts/s",
                  f"hud_ray ≥ {TARGET_RATE:,.0f} rollouts/s",
                  params={"rollouts": n, "slots": slots, "sim": options})

    def add(name: str, res: dict[str, Any], load0: float, note: str = "",
            count: int = n) -> Row:
        rate = count / res["wall_s"]
        extra = {"wall_s": res["wall_s"]}
        if "driver_cpu_s" in res:
            extra["driver_cpu_ms_per_rollout"] = 1000 * res["driver_cpu_s"] / count
        if "rows" in res:
            extra["statuses"] = statuses(res["rows"])
        for key in ("workers", "actors", "batch_size", "actor_start_s"):
            if key in res:
                extra[key] = res[key]
        row = Row(name, rate, "rollouts/s", extra=extra, note=note, load=(load0, loadavg()))
        bench.rows.append(row)
        return row

    for label, kwargs in (("hud_ray", {}), ("hud_ray (governor off)", {"governor": False})):
        if quick and kwargs:
            continue
        load0 = loadavg()
        res = hud_ray_run(tasks, slots, options, out / "b1" / label.replace(" ", "_"),
                          **kwargs)
        add(label, res, load0, note=f"{res['workers']} workers x {slots // res['workers']} "
                                    "slots")

    load0 = loadavg()
    c0 = time.process_time()
    res = hud_style.run(rs, slots, options, out / "b1" / "hud_style", RUN_ID)
    res["driver_cpu_s"] = time.process_time() - c0
    add("hud-style (1 process, semaphore+gather)", res, load0, note="no Ray; all CPU is "
        "the driver's")

    load0 = loadavg()
    c0 = time.process_time()
    res = ray_data.run(rs, slots, options, out / "b1" / "ray_data", RUN_ID)
    res["driver_cpu_s"] = time.process_time() - c0
    add("Ray Data map_batches + ActorPoolStrategy", res, load0,
        note=f"{res['actors']} actors x batch {res['batch_size']}")

    load0 = loadavg()
    count = n // 4 if not quick else n
    c0 = time.process_time()
    res = actor_per_sandbox.run(rs[:count], actor_slots, options,
                                out / "b1" / "actor_per_sandbox", RUN_ID)
    res["driver_cpu_s"] = time.process_time() - c0
    row = add("actor per sandbox + ray.wait", res, load0, count=count,
              note=f"{res['actors']} actors; {count:,} rollouts; wall includes "
                   f"{res['actor_start_s']:.1f} s actor start")
    row.extra["rate_after_start"] = count / (res["wall_s"] - res["actor_start_s"])

    for label, fn in (("ceiling: raw asyncio client ↔ sim server (2 processes)",
                       raw_client.two_process),
                      ("ceiling: raw asyncio client + sim server (1 process)",
                       raw_client.one_process)):
        load0 = loadavg()
        t0 = time.perf_counter()
        rate = fn(n, options)
        bench.rows.append(Row(label, rate, "exchanges/s",
                              extra={"wall_s": time.perf_counter() - t0},
                              note="protocol only: no provider, no rows, no Ray",
                              load=(load0, loadavg())))

    ours = bench.rows[0]
    for row in bench.rows[1:]:
        if row.value:
            row.ratio = ours.value / row.value  # >1: hud_ray faster
    bench.met = ours.value >= TARGET_RATE
    ceiling = bench.rows[-2].value
    bench.verdict = (f"hud_ray {ours.value:,.0f} rollouts/s "
                     f"({ours.extra.get('driver_cpu_ms_per_rollout', 0):.3f} ms driver CPU "
                     f"per rollout), {ours.value / ceiling:.0%} of the 2-process raw ceiling "
                     f"({ceiling:,.0f}/s).")
    return bench
