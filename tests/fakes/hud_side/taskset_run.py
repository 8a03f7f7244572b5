"""hud's own `Taskset.run`, as a hud user runs it, for a side-by-side comparison:

    python taskset_run.py TASKS ENV_FILE AGENT_JSON OUT_JSON

AGENT_JSON: {"spec": "pkg.mod:Class", "config": {...}} (a hud Agent class and its config).
Writes {slug: {"reward": r, "status": s}} for every run to OUT_JSON. Offline: HUD_API_KEY
is empty, so hud reports nothing anywhere.
"""

import asyncio
import importlib
import json
import os
import sys

os.environ["HUD_API_KEY"] = ""
os.environ.setdefault("HUD_FILE_TRACKING_ENABLED", "false")

from hud import LocalRuntime
from hud.eval import Taskset


def load_agent(spec: str, config: dict):
    module_name, _, attr = spec.partition(":")
    if module_name.endswith(".py"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(module_name)))
        module_name = os.path.basename(module_name)[:-3]
    cls = getattr(importlib.import_module(module_name), attr)
    return cls.load(config) if config else cls()


def main() -> None:
    tasks, env_file, agent_json, out = sys.argv[1:5]
    agent_spec = json.loads(agent_json)
    agent = load_agent(agent_spec["spec"], agent_spec.get("config") or {})
    taskset = Taskset.from_file(tasks)
    job = asyncio.run(taskset.run(agent, runtime=LocalRuntime(env_file), max_concurrent=4))
    rows = {run.slug: {"reward": run.reward, "status": run.trace.status} for run in job.runs}
    with open(out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()
