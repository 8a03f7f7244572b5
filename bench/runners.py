"""hud_ray through its public API, timed from the call: `plan_run(...)` then the stream.

The stream ends when every row is in Parquet and the manifest says finished; a poller
notes when the first part file appears (time to first row).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from hud_ray.api import plan_run
from hud_ray.results import read_results

from .common import Poller, first_file_at
from .workloads import RUN_ID


def hud_ray_run(tasks: list[dict[str, Any]], slots: int, sim_options: dict[str, Any],
                out: Path, *, agent: Any = "nop", provider: str = "sim",
                run_id: str = RUN_ID, **kwargs: Any) -> dict[str, Any]:
    """Run to the end; rows, wall, first_row_s and driver CPU (process_time)."""
    options = dict(sim_options)
    if provider == "sim":
        options.setdefault("account", f"bench-{uuid.uuid4().hex[:8]}")
    parts = out / run_id / "rollouts"
    watch = first_file_at(parts)
    c0 = time.process_time()
    t0 = time.perf_counter()
    with Poller(watch, every_s=0.005) as poller:
        plan = plan_run(tasks, agent, provider, concurrency=slots, out=out, run_id=run_id,
                        progress=False, provider_options=options, **kwargs)
        first_batch_s = None
        for _ in plan.stream():
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    if poller.error is not None:
        raise poller.error
    seen = watch.seen.get("t")  # type: ignore[attr-defined]
    rows = read_results(plan.run_dir).to_pylist()
    return {"rows": rows, "wall_s": wall, "driver_cpu_s": cpu,
            "first_row_s": (seen - t0) if seen else None, "first_batch_s": first_batch_s,
            "workers": len(plan.scheduler.workers),
            "rows_per_step": len(rows) / max(1, plan.scheduler.step_replies), "account": options.get("account")}


def statuses(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row["status"]] = out.get(row["status"], 0) + 1
    return out


def first_finished(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row that finished first (its total_s is "the first rollout's duration")."""
    done = [r for r in rows if r.get("finished_at") is not None]
    return min(done, key=lambda r: r["finished_at"]) if done else None
