"""B7: an LLM-bound sweep — the model endpoint is the scarce thing, not the sandbox.

The rate is answered requests/s between each side's first and last model call, counted by
the endpoint. A scripted OpenAI-compatible endpoint on 127.0.0.1 allows `RPS` requests per second and
answers 429 (Retry-After: 1) above it; every rollout makes one model call (hud's
`OpenAIChatAgent` answering a hud env's `count` task) against one served hud env. Same
endpoint, same env, same agent, same concurrency, in the same run:
- hud_ray with the LLM endpoint governor (`llm_limits={"rpm": RPS * 60}`);
- hud's `Taskset.run(max_concurrent=C)` (the openai client's own 2 retries on 429).
Target: hud_ray ≥ 95 % of the allowed rate with 0 rollouts lost to 429s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import REPO, Bench, Row, loadavg
from .runners import hud_ray_run, statuses

ENV_FILE = REPO / "bench" / "envs" / "hud_count.py"
HUD_SIDE = REPO / "bench" / "baselines" / "hud_llm_taskset.py"
PROMPT = re.compile(r"letter '(.)' appear in '(.*)'\?")


def _policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    from tests.fakes.openai_server import answer, text_of

    prompt = next((text_of(m) for m in messages if m.get("role") == "user"), "")
    match = PROMPT.search(prompt)
    return answer(str(match.group(2).count(match.group(1))) if match else "?")


def _span_rate(times: list[float]) -> float:
    """Answered requests/s from the first to the last one: the rate each side kept up
    while it was calling the model (start-up, imports and teardown are not the endpoint's)."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"env": "benchcount", "id": "count", "args": {"text": f"banana-{i}", "letter": "a"}}
            for i in range(n)]


def run(out: Path, quick: bool) -> Bench:
    from tests.fakes.openai_server import ScriptedModel
    from tests.fakes.procs import EnvServer

    n, rps, concurrency = (200, 20, 32) if quick else (2000, 40, 64)
    allowed = float(rps)
    bench = Bench("B7", "LLM-bound sweep against a rate-limited endpoint",
                  "successful model requests/s", "hud_ray ≥ 95% of the allowed rate, "
                  "0 rollouts lost to 429s",
                  params={"rollouts": n, "allowed_rps": rps, "concurrency": concurrency})
    os.environ["B7_KEY"] = "not-a-secret"
    hud_env = {"HUD_API_KEY": "", "HUD_FILE_TRACKING_ENABLED": "false"}
    with EnvServer(ENV_FILE, module="hud.environment.server", extra_env=hud_env,
                   timeout_s=120) as server:
        with ScriptedModel(_policy, limit_per_s=rps) as model:
            load0 = loadavg()
            res = hud_ray_run(_rows(n), concurrency, {"url": server.url}, out / "b7",
                              agent="hud:hud.agents.openai_compatible:OpenAIChatAgent",
                              provider="attach", run_id="b7-hud_ray",
                              agent_config={"model": "scripted-1", "base_url": model.base_url,
                                            "api_key_env": "B7_KEY", "max_steps": 3},
                              llm_limits={"rpm": rps * 60})
            ok = sum(1 for r in res["rows"] if r["status"] == "ok" and r["reward"] == 1.0)
            lost = sum(1 for r in res["rows"] if "RateLimit" in (r["error_message"] or "")
                       or "429" in (r["error_message"] or ""))
            rate = _span_rate(model.answered_at)
            bench.rows.append(Row("hud_ray + LLM governor", rate, "req/s",
                                  load=(load0, loadavg()),
                                  note=f"{ok}/{n} ok, {lost} lost to 429, "
                                       f"{model.rate_limited} 429s seen; "
                                       f"{100 * rate / allowed:.0f}% of allowed",
                                  extra={"wall_s": res["wall_s"], "statuses":
                                         statuses(res["rows"]), "rate_limited":
                                         model.rate_limited, "lost_to_429": lost}))
            ours = (rate, lost, ok)
            before_requests, before_429 = len(model.answered_at), model.rate_limited
            load0 = loadavg()
            done = subprocess.run([sys.executable, str(HUD_SIDE), server.url, model.base_url,
                                   str(n), str(concurrency)], capture_output=True, text=True,
                                  timeout=3600, env={**os.environ, **hud_env})
            if done.returncode != 0:
                raise RuntimeError(f"hud's Taskset.run failed: {done.stderr[-3000:]}")
            hud = json.loads(done.stdout.strip().splitlines()[-1])
            hud_rate = _span_rate(model.answered_at[before_requests:])
            bench.rows.append(Row(f"hud Taskset.run(max_concurrent={concurrency})", hud_rate,
                                  "req/s", load=(load0, loadavg()),
                                  note=f"{hud['rewarded']}/{n} ok, {hud['failed_on_429']} lost "
                                       f"to 429, {model.rate_limited - before_429} 429s seen; "
                                       f"{100 * hud_rate / allowed:.0f}% of allowed",
                                  extra=hud))
    bench.rows.append(Row("allowed by the endpoint", allowed, "req/s"))
    for row in bench.rows[1:]:
        if row.value:
            row.ratio = ours[0] / row.value
    bench.met = ours[0] >= 0.95 * allowed and ours[1] == 0
    bench.verdict = (f"hud_ray {ours[0]:.1f} req/s = {100 * ours[0] / allowed:.0f}% of the "
                     f"allowed {allowed:.0f}/s, {ours[1]} rollouts lost to 429; hud "
                     f"{bench.rows[1].value:.1f} req/s, {hud['failed_on_429']} lost.")
    return bench
