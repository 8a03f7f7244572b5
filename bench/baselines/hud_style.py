"""hud-style: one process, `asyncio.Semaphore(slots)` + `asyncio.gather` over every rollout.

This is the shape of hud 0.6.21's `Taskset.run(max_concurrent=...)` (eval/taskset.py: a
semaphore around each rollout, one gather over all of them, the Job returned when every
rollout is done), driving the same `sim` provider through hud_ray's own one-rollout code
(`run_rollout`) — so the only difference from hud_ray is the absence of Ray, workers,
batching and streaming. Rows are written to Parquet when the gather returns, as a user
would save hud's returned runs.

Also a density probe (`python -m bench.baselines.hud_style density N OPTIONS_JSON`): hold
N rollouts concurrently in this one process and report its own USS.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hud_ray.agents import resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import arrow_schema
from hud_ray.tasks import Rollout
from providers import get_provider


async def gather_rollouts(rs: list[Rollout], slots: int, sim_options: dict[str, Any],
                          run_id: str, agent: Any = "nop") -> list[dict[str, Any]]:
    provider = get_provider("sim", **sim_options)
    solver = resolve_agent(agent)
    config = RolloutConfig(run_id=run_id)
    sem = asyncio.Semaphore(slots)

    async def one(rollout: Rollout) -> dict[str, Any]:
        async with sem:
            return (await run_rollout(rollout, solver, provider, config)).to_row()

    try:
        return list(await asyncio.gather(*(one(r) for r in rs)))
    finally:
        await provider.close()


def run(rs: list[Rollout], slots: int, sim_options: dict[str, Any], out_dir: Path,
        run_id: str, agent: Any = "nop") -> dict[str, Any]:
    """Run everything, then write one Parquet file. Times are from the call."""
    t0 = time.perf_counter()
    rows = asyncio.run(gather_rollouts(rs, slots, sim_options, run_id, agent))
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), out_dir / "runs.parquet")
    done = time.perf_counter() - t0
    return {"rows": rows, "wall_s": done, "first_row_s": done}


# --- density probe (run as a subprocess so its memory is its own) ----------------------------
async def _hold(n: int, sim_options: dict[str, Any]) -> dict[str, Any]:
    import psutil

    me = psutil.Process()
    base_uss = me.memory_full_info().uss
    provider = get_provider("sim", **sim_options)
    solver = resolve_agent("nop")
    config = RolloutConfig(run_id="density")
    from bench.workloads import rollouts, sim_tasks

    tasks = [asyncio.create_task(run_rollout(r, solver, provider, config))
             for r in rollouts(sim_tasks(n))]
    # every sandbox live and every rollout waiting on its (long) grade reply
    deadline = time.monotonic() + 300
    live = 0
    while time.monotonic() < deadline:
        live = sum(1 for _ in provider.live_ids())
        if live >= n:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # let every grade call go out
    uss = me.memory_full_info().uss
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await provider.close()
    return {"concurrent": live, "uss_bytes": uss, "base_uss_bytes": base_uss}


def main() -> None:
    if sys.argv[1:2] != ["density"]:
        raise SystemExit("usage: python -m bench.baselines.hud_style density N OPTIONS_JSON")
    n, options = int(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps(asyncio.run(_hold(n, options))), flush=True)


if __name__ == "__main__":
    main()
