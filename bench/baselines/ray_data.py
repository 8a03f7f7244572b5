"""Ray Data: `from_items(rollouts).map_batches(RolloutBatch, ActorPoolStrategy)`.

What a Ray user reaches for first: rollouts as rows, an actor class holding the provider
(so the sandbox client is built once per actor), `ActorPoolStrategy(size=actors)`, and a
`batch_size` so that actors x batch_size = the slot count; each actor runs its batch's
rollouts concurrently (asyncio.gather) — a batch ends when its slowest rollout does.
Results go out with `write_parquet` (streaming: a file per finished block).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from hud_ray.tasks import Rollout


class RolloutBatch:
    """Ray Data UDF: one per actor; runs a batch of rollouts in fresh sim sandboxes."""

    def __init__(self, sim_options: dict[str, Any], agent: Any, run_id: str) -> None:
        from hud_ray.agents import resolve_agent
        from hud_ray.rollout import RolloutConfig
        from providers import get_provider

        self.provider = get_provider("sim", **sim_options)
        self.agent = resolve_agent(agent)
        self.config = RolloutConfig(run_id=run_id)
        self.loop = asyncio.new_event_loop()

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        from hud_ray.rollout import run_rollout
        from hud_ray.schema import arrow_schema
        from hud_ray.tasks import Task

        rs = [Rollout(task=Task(**json.loads(t)), repeat=int(k))
              for t, k in zip(batch["task"], batch["repeat"], strict=True)]
        async def batch() -> list[Any]:
            return await asyncio.gather(
                *(run_rollout(r, self.agent, self.provider, self.config) for r in rs))

        # Ray Data calls the UDF from a pool thread: the actor keeps one loop of its own
        # (the sim's listener lives on it) and runs each batch to completion on it.
        results = self.loop.run_until_complete(batch())
        return pa.Table.from_pylist([r.to_row() for r in results], schema=arrow_schema())


def run(rs: list[Rollout], slots: int, sim_options: dict[str, Any], out_dir: Path,
        run_id: str, agent: Any = "nop", actors: int = 8) -> dict[str, Any]:
    import pyarrow.dataset as ds
    import ray.data

    actors = max(1, min(actors, slots))
    batch_size = max(1, slots // actors)
    items = [{"task": r.task.model_dump_json(), "repeat": r.repeat} for r in rs]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    t0 = time.perf_counter()
    (ray.data.from_items(items)
        .map_batches(RolloutBatch, fn_constructor_args=(sim_options, agent, run_id),
                     batch_size=batch_size,
                     compute=ray.data.ActorPoolStrategy(size=actors),
                     # I/O-bound actors: a share of a CPU each, so `actors` fit on 2 cores
                     num_cpus=min(1.0, 1.0 / actors))
        .write_parquet(str(out_dir)))
    wall = time.perf_counter() - t0
    rows = ds.dataset(str(out_dir), format="parquet").to_table().to_pylist()
    return {"rows": rows, "wall_s": wall, "actors": actors, "batch_size": batch_size}
