"""hud's own scheduler on an LLM-bound sweep — hud's `Taskset.run` with `max_concurrent`,
hud's `OpenAIChatAgent`, one served hud env (`Runtime(url)`), against the same
rate-limited model endpoint as hud_ray in the same B7 run:

    python bench/baselines/hud_llm_taskset.py ENV_URL BASE_URL N MAX_CONCURRENT

Prints one JSON line: wall, runs, rewarded, how many failed and how many of those on a
429. Nothing here imports hud_ray or bench.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

os.environ["HUD_API_KEY"] = ""
os.environ["HUD_CLI_ANALYTICS_ENABLED"] = "false"
os.environ["HUD_FILE_TRACKING_ENABLED"] = "false"

from hud.agents.openai_compatible import OpenAIChatAgent
from hud.eval import Runtime, Task, Taskset


async def main(env_url: str, base_url: str, n: int, max_concurrent: int) -> dict:
    tasks = [Task(env="benchcount", id="count", args={"text": f"banana-{i}", "letter": "a"})
             for i in range(n)]
    agent = OpenAIChatAgent.load({"model": "scripted-1", "base_url": base_url, "api_key": "x",
                                  "max_steps": 3})
    t0 = time.perf_counter()
    job = await Taskset("b7", tasks).run(agent, runtime=Runtime(env_url),
                                         max_concurrent=max_concurrent)
    wall = time.perf_counter() - t0
    failed = [run for run in job.runs if run.trace.status == "error" or run.reward != 1.0]
    on_429 = [run for run in failed
              if any("429" in (step.error or "") or "RateLimit" in (step.error or "")
                     for step in run.trace.steps)]
    return {"wall_s": wall, "runs": len(job.runs),
            "rewarded": sum(1 for run in job.runs if run.reward == 1.0),
            "failed": len(failed), "failed_on_429": len(on_429)}


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    print(json.dumps(result), flush=True)
