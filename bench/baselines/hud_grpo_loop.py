"""hud's own synchronous GRPO-style loop on a real hud env, for B9 — run with a python that
has hud (the `[hud]` extra), never importing hud_ray or bench:

    python bench/baselines/hud_grpo_loop.py ENV_FILE STEPS GROUPS_PER_STEP N SLOTS TRAIN_S

Per step: `Taskset.run(agent, runtime=SubprocessRuntime(env_file), group=N,
max_concurrent=SLOTS)` over GROUPS_PER_STEP tasks (hud's own GRPO groups: one group id per
task's N repeats), then TRAIN_S of "training" during which nothing runs. The agent's work
time has B9's distribution (lognormal, mu=0, sigma=1 s, capped at 20 s), drawn from a
seeded generator. Prints one JSON line: groups, rollouts, rewarded, wall (hud's import
excluded, as in hud_taskset.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sys
import time

# Offline: no API key means hud reports nothing anywhere.
os.environ["HUD_API_KEY"] = ""
os.environ["HUD_CLI_ANALYTICS_ENABLED"] = "false"
os.environ["HUD_FILE_TRACKING_ENABLED"] = "false"
os.environ.pop("HUD_TELEMETRY_LOCAL_DIR", None)

from hud.agents.base import Agent
from hud.eval import SubprocessRuntime, Task, Taskset
from hud.eval.run import Run

PROMPT = re.compile(r"letter '(.)' appear in '(.*)'\?")
WORK = random.Random(9)


class LongTailed(Agent):
    """B9's work time, then the right answer (every rollout is rewarded, as `nop` is)."""

    async def __call__(self, run: Run) -> None:
        await asyncio.sleep(min(20.0, WORK.lognormvariate(0.0, 1.0)))
        match = PROMPT.search(run.prompt_text)
        run.trace.content = str(match.group(2).count(match.group(1))) if match else "?"


async def main(env_file: str, steps: int, per_step: int, n: int, slots: int,
               train_s: float) -> dict:
    runtime = SubprocessRuntime(env_file)
    agent = LongTailed()
    rollouts = rewarded = 0
    t0 = time.perf_counter()
    for step in range(steps):
        tasks = [Task(env="benchcount", id="count",
                      args={"text": f"banana-{step}-{i}", "letter": "a"})
                 for i in range(per_step)]
        job = await Taskset(f"b9-step{step}", tasks).run(
            agent, runtime=runtime, group=n, max_concurrent=slots)
        rollouts += len(job.runs)
        rewarded += sum(1 for run in job.runs if run.reward == 1.0)
        await asyncio.sleep(train_s)  # the optimizer step: nothing runs meanwhile
    return {"groups": steps * per_step, "rollouts": rollouts, "rewarded": rewarded,
            "wall_s": time.perf_counter() - t0}


if __name__ == "__main__":
    env_file, steps, per_step, n, slots, train_s = sys.argv[1:7]
    result = asyncio.run(main(env_file, int(steps), int(per_step), int(n), int(slots),
                              float(train_s)))
    print(json.dumps(result), flush=True)
