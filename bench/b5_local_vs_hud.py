"""B5: hud_ray's `local` provider against hud's own scheduler, on the same real hud env.

Both sides: the env `bench/envs/hud_count.py` served by hud 0.6.21's real server
(`python -m hud.environment.server`), a fresh env process per rollout, the same instant
agent, the same task rows, 8 rollouts at a time.
- hud: `Taskset.run(agent, runtime=SubprocessRuntime(env_file), max_concurrent=8)` in a
  subprocess of hud's venv; timed inside, around `Taskset.run` alone.
- hud_ray: `run_distributed(..., provider="local", command="<hud python> -m
  hud.environment.server {env_file} --port 0")`, plus `zygote=True` when the local
  provider has that option (a process that has imported hud forks each env server).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from providers.local import LocalProvider

from .agents import count_tasks
from .common import REPO, Bench, Row, loadavg
from .runners import hud_ray_run, statuses

ENV_FILE = REPO / "bench" / "envs" / "hud_count.py"
HUD_TASKSET = REPO / "bench" / "baselines" / "hud_taskset.py"
TARGET_SPEEDUP = 40.0  # issue 15, item 3: on the first run of a session
SECOND_RUN = "hud_ray local + zygote, second run (worker kept)"
HUD_ENV = {"HUD_API_KEY": "", "HUD_CLI_ANALYTICS_ENABLED": "false",
           "HUD_FILE_TRACKING_ENABLED": "false"}


def find_hud_python() -> tuple[str | None, str]:
    """(path, why-not). HUD_PYTHON, then this interpreter (one install), then .venv-hud."""
    candidates = [os.environ.get("HUD_PYTHON"), sys.executable,
                  str(REPO / ".venv-hud" / "bin" / "python")]
    tried = []
    for path in filter(None, candidates):
        if not Path(path).exists():
            tried.append(f"{path} (missing)")
            continue
        done = subprocess.run([path, "-c", "import hud"], capture_output=True, text=True,
                              timeout=120, env=_hud_env())
        if done.returncode == 0:
            return path, ""
        tried.append(f"{path} (cannot import hud)")
    return None, "no python with hud: tried " + ", ".join(tried) + " — `make hud-venv`"


def _hud_env() -> dict[str, str]:
    env = {**os.environ, **HUD_ENV}
    env.pop("PYTHONPATH", None)  # hud's venv must not see hud_ray's code
    env.pop("HUD_TELEMETRY_LOCAL_DIR", None)
    return env


def _hud_side(hud_python: str, n: int, slots: int) -> dict[str, Any]:
    done = subprocess.run([hud_python, str(HUD_TASKSET), str(ENV_FILE), str(n), str(slots)],
                          capture_output=True, text=True, timeout=1200, env=_hud_env(),
                          cwd=str(ENV_FILE.parent))
    if done.returncode != 0:
        raise RuntimeError(f"hud's Taskset.run failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(out: Path, quick: bool) -> Bench:
    n = 8 if quick else 64
    slots = 8
    hud_python, why = find_hud_python()
    bench = Bench("B5", "local provider vs hud's Taskset.run (real hud env)",
                  "wall for all rollouts",
                  f"hud_ray ≥ {TARGET_SPEEDUP:.0f}x faster than hud (first run)",
                  params={"rollouts": n, "slots": slots, "env": str(ENV_FILE.relative_to(REPO)),
                          "hud_python": hud_python})
    if hud_python is None:
        bench.skipped = why
        print(f"B5 skipped: {why}", flush=True)
        return bench

    env_prefix = "env " + " ".join(f"{k}={v}" for k, v in HUD_ENV.items()) + " "
    command = env_prefix + f"{shlex.quote(hud_python)} -m hud.environment.server {{env_file}} --port 0"
    options: dict[str, Any] = {"env_file": str(ENV_FILE), "command": command}
    variants: list[tuple[str, dict[str, Any]]] = [("hud_ray local", {})]
    if "zygote" in LocalProvider.Options.model_fields:
        # the option defaults to on: the plain row must turn it off explicitly
        # The same configuration twice: the second run takes the first one's worker, its
        # zygote (hud's server imported, the env loaded) included (hud_ray.pool).
        variants = [("hud_ray local + zygote", {"zygote": True}),
                    (SECOND_RUN, {"zygote": True}),
                    ("hud_ray local, zygote=false", {"zygote": False})]
    else:
        bench.notes.append("the local provider has no `zygote` option yet: hud_ray pays a "
                           "full hud import per env process, as hud does")
    for label, extra in variants:
        load0 = loadavg()
        res = hud_ray_run(count_tasks(n), slots, {**options, **extra},
                          out / "b5" / "".join(c if c.isalnum() else "_" for c in label),
                          agent="bench.agents:instant", provider="local",
                          # its own run id: the local provider's governor is per machine, and
                          # a second run under the same id has its env servers reaped by the
                          # first one's clean-up (seen: SIGKILLed envs, even a dead worker)
                          run_id=f"b5-{len(bench.rows)}")
        rewarded = sum(1 for r in res["rows"] if r["reward"] == 1.0)
        bench.rows.append(Row(label, res["wall_s"], "s", load=(load0, loadavg()),
                              note=f"{rewarded}/{n} rewarded",
                              extra={"statuses": statuses(res["rows"]),
                                     "first_row_s": res["first_row_s"],
                                     "driver_cpu_s": res["driver_cpu_s"],
                                     **_phase_means(res["rows"])}))

    load0 = loadavg()
    hud = _hud_side(hud_python, n, slots)
    bench.rows.append(Row("hud Taskset.run + SubprocessRuntime", hud["wall_s"], "s",
                          load=(load0, loadavg()), note=f"{hud['rewarded']}/{hud['runs']} "
                          "rewarded; timed inside, hud's import excluded", extra=hud))
    cold = bench.rows[0]
    for row in bench.rows[:-1]:
        if row is not cold:
            row.ratio = row.value / cold.value  # >1: slower than the cold zygote run
    hud_row = bench.rows[-1]
    hud_row.ratio = hud["wall_s"] / cold.value
    speedup = hud["wall_s"] / cold.value
    second = next((r for r in bench.rows if r.contender == SECOND_RUN), None)
    bench.met = speedup >= TARGET_SPEEDUP
    bench.verdict = (f"{cold.contender}: {cold.value:.1f} s vs hud {hud['wall_s']:.1f} s → "
                     f"{speedup:.1f}x (first run in the session; its first rollout waited "
                     f"{cold.extra.get('provision_s_max', 0):.1f} s for the zygote to import "
                     "hud and load the env).")
    if second is not None:
        bench.verdict += (f" Second run, worker and zygote kept: {second.value:.1f} s → "
                          f"{hud['wall_s'] / second.value:.1f}x.")
    return bench


def _phase_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Where a rollout's time went: mean per phase, and the slowest provision (the one
    that started the zygote)."""
    out: dict[str, float] = {}
    for phase in ("provision_s", "ready_s", "start_s", "agent_s", "grade_s", "teardown_s"):
        values = [r[phase] for r in rows if isinstance(r.get(phase), int | float)]
        if values:
            out[f"{phase}_mean"] = sum(values) / len(values)
            if phase == "provision_s":
                out["provision_s_max"] = max(values)
    return out
