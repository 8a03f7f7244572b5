"""Run with hud's python (hud 0.6.21): hud's OWN client and rollout drive an envkit server.

    <hud python> drive_envkit.py PORT   → one JSON line per case on stdout

The env is examples/demo/env.py served by `python -m hud_ray.envkit` (hud_ray's venv).
Nothing here imports hud_ray: this is what a hud user's code does, unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

# Offline: no API key means hud reports nothing anywhere.
os.environ["HUD_API_KEY"] = ""
os.environ.pop("HUD_TELEMETRY_LOCAL_DIR", None)

import hud.clients.client as hud_client
from hud.agents.base import Agent
from hud.eval import Runtime, Task
from hud.eval.run import Run, rollout


class DemoAgent(Agent):
    """Solves the demo's count / reverse / kv_lookup prompts; `wrong` answers badly."""

    def __init__(self, wrong: bool = False, sleep_s: float = 0.0) -> None:
        super().__init__()
        self.wrong = wrong
        self.sleep_s = sleep_s

    async def __call__(self, run: Run) -> None:
        await asyncio.sleep(self.sleep_s)
        prompt = run.prompt_text
        if m := re.search(r"letter '(.)' appear in: '(.*)'\?", prompt):
            answer = str(m.group(2).lower().count(m.group(1).lower()))
        elif m := re.search(r"Reverse the word '([^']*)'", prompt):
            answer = m.group(1)[::-1]
        elif m := re.search(r"send '(GET \S+)'", prompt):
            # hud routes the binding through a local forwarder → tunnel.open on the env
            host, port = run.client.binding("kv").url.removeprefix("tcp://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(m.group(1).encode() + b"\n")
            await writer.drain()
            answer = (await reader.readline()).decode().strip()
            writer.close()
        else:
            answer = "?"
        run.trace.content = "wrong" if self.wrong else answer


async def main(port: int) -> None:
    runtime = Runtime(f"tcp://127.0.0.1:{port}")
    cases = {
        "count": (Task(env="demo", id="count", args={"sentence": "banana bandana", "letter": "a"}),
                  DemoAgent(), None),
        "kv_lookup": (Task(env="demo", id="kv_lookup", args={"key": "key42"}), DemoAgent(), None),
        "wrong": (Task(env="demo", id="reverse", args={"word": "ribbon"}), DemoAgent(True), None),
        "timeout": (Task(env="demo", id="count", args={"sentence": "abc", "letter": "a"}),
                    DemoAgent(sleep_s=30), 1.0),
    }
    for name, (task, agent, timeout) in cases.items():
        run = await rollout(task, agent, runtime=runtime, rollout_timeout=timeout)
        print(json.dumps({"case": name, "reward": run.reward, "status": str(run.trace.status),
                          "stop_reason": run.trace.stop_reason, "error": run.trace.error,
                          "content": run.trace.content}), flush=True)
    # hud's heartbeat (normally every 120 s) against envkit, mid-task
    hud_client._CONTROL_HEARTBEAT_INTERVAL_SECONDS = 0.2
    task = Task(env="demo", id="count", args={"sentence": "mississippi", "letter": "s"})
    run = await rollout(task, DemoAgent(sleep_s=1.0), runtime=runtime)
    print(json.dumps({"case": "heartbeat", "reward": run.reward, "status": str(run.trace.status),
                      "error": run.trace.error}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
