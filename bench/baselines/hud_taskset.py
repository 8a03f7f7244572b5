"""hud's own scheduler on a real hud env — run with hud's python, never hud_ray's:

    <hud python> bench/baselines/hud_taskset.py ENV_FILE N MAX_CONCURRENT

`Taskset.run(agent, runtime=SubprocessRuntime(env_file), max_concurrent=M)`: a fresh
`python -m hud.environment.server` child per rollout, an instant agent (the same policy as
bench.agents.instant). Prints one JSON line: the wall time of `Taskset.run` alone (hud's
own import time excluded) and the rewards. Nothing here imports hud_ray or bench.
"""

from __future__ import annotations

import asyncio
import json
import os
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


class Instant(Agent):
    async def __call__(self, run: Run) -> None:
        match = PROMPT.search(run.prompt_text)
        run.trace.content = str(match.group(2).count(match.group(1))) if match else "?"


async def main(env_file: str, n: int, max_concurrent: int) -> dict:
    tasks = [Task(env="benchcount", id="count",
                  args={"text": "banana" * (1 + i % 3) + f"-{i}", "letter": "a"})
             for i in range(n)]
    taskset = Taskset("bench", tasks)
    t0 = time.perf_counter()
    job = await taskset.run(Instant(), runtime=SubprocessRuntime(env_file),
                            max_concurrent=max_concurrent)
    wall = time.perf_counter() - t0
    rewards = [run.reward for run in job.runs]
    return {"wall_s": wall, "runs": len(job.runs),
            "rewarded": sum(1 for r in rewards if r == 1.0)}


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    print(json.dumps(result), flush=True)
