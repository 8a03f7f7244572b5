"""One Ray actor per sandbox slot, a `ray.wait` window keeping one rollout in flight each.

The card's literal shape ("Ray actors each own one cloud sandbox"): `slots` actors, each
running one rollout at a time in a fresh sim sandbox, the driver handing the next rollout
to whichever actor returned. Rows are collected in the driver and written to Parquet at
the end; `first_row_s` is when the first row reached the driver (in memory — a generous
reading of "first row available").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from hud_ray.schema import arrow_schema
from hud_ray.tasks import Rollout


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class SandboxActor:
    def __init__(self, sim_options: dict[str, Any], agent: Any, run_id: str) -> None:
        from hud_ray.agents import resolve_agent
        from hud_ray.rollout import RolloutConfig
        from providers import get_provider

        self.provider = get_provider("sim", **sim_options)
        self.agent = resolve_agent(agent)
        self.config = RolloutConfig(run_id=run_id)

    async def run(self, rollout: Rollout) -> dict[str, Any]:
        from hud_ray.rollout import run_rollout

        return (await run_rollout(rollout, self.agent, self.provider, self.config)).to_row()

    async def pid(self) -> int:
        import os

        return os.getpid()


def start_actors(n: int, sim_options: dict[str, Any], run_id: str,
                 agent: Any = "nop") -> list[Any]:
    # max_concurrency=1: an async actor takes 1,000 calls at once by default — one sandbox
    # per actor means one rollout at a time.
    actors = [SandboxActor.options(max_concurrency=1).remote(sim_options, agent, run_id)
              for _ in range(n)]
    ray.get([a.pid.remote() for a in actors])
    return actors


def run(rs: list[Rollout], slots: int, sim_options: dict[str, Any], out_dir: Path,
        run_id: str, agent: Any = "nop") -> dict[str, Any]:
    t0 = time.perf_counter()
    actors = start_actors(min(slots, len(rs)), sim_options, run_id, agent)
    started = time.perf_counter() - t0
    todo = iter(rs)
    pending: dict[Any, Any] = {}
    for actor in actors:
        rollout = next(todo, None)
        if rollout is not None:
            pending[actor.run.remote(rollout)] = actor
    rows: list[dict[str, Any]] = []
    first_row_s = None
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                actor = pending.pop(ref)
                rows.append(ray.get(ref))
                if first_row_s is None:
                    first_row_s = time.perf_counter() - t0
                rollout = next(todo, None)
                if rollout is not None:
                    pending[actor.run.remote(rollout)] = actor
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), out_dir / "runs.parquet")
    return {"rows": rows, "wall_s": time.perf_counter() - t0, "first_row_s": first_row_s,
            "actor_start_s": started, "actors": len(actors)}
