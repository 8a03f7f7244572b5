"""Synthetic runs written through hud_ray's own writer (`ResultWriter`): rows and steps of
the real schema, for the viewer's benchmark (B8: 10,000 and 100,000 rows) and its tests,
where running that many rollouts would measure the sandbox, not the viewer."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hud_ray.results import ResultWriter
from hud_ray.schema import PHASES

ERRORS = [  # (status, error_type, message template): ids, paths, addresses vary per row
    ("env_error", "ToolError", "tool bash failed: /tmp/work/{i}/out.txt: No such file"),
    ("infra_error", "ConnectionError", "connect to 10.0.{a}.{b}:{p} refused"),
    ("timeout", "Timeout", "agent phase exceeded 300 s in sandbox sb-{h}"),
    ("agent_error", "ValueError", "model returned invalid JSON at position {i}"),
]


def rollout_row(i: int, *, variant: str | None, tasks: int, skill: float, seed: int,
                t0: datetime) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{variant}-{i}")
    task = i % tasks
    slug = f"task-{task:05d}"
    repeat = i // tasks
    fail = rng.random() < 0.08
    status, etype, msg = ("ok", None, None)
    if fail:
        status, etype, template = ERRORS[rng.randrange(len(ERRORS))]
        msg = template.format(i=rng.randrange(10**6), a=rng.randrange(255),
                              b=rng.randrange(255), p=rng.randrange(1024, 65535),
                              h=f"{rng.getrandbits(48):012x}")
    solved = not fail and rng.random() < skill * (0.5 + (task % 7) / 12)
    phases = {f"{p}_s": round(rng.uniform(0.01, 0.3), 4) for p in PHASES}
    phases["agent_s"] = round(rng.lognormvariate(0.5, 0.6), 4)
    total = sum(phases.values())
    finished = t0 + timedelta(seconds=i * 0.05 + total)
    turns = 0 if fail and status == "infra_error" else rng.randrange(1, 6)
    ptok, ctok = turns * rng.randrange(200, 900), turns * rng.randrange(20, 120)
    key = f"{slug}#{repeat}" + (f"@{variant}" if variant else "")
    steps = []
    for turn in range(turns):
        steps.append({"index": 2 * turn, "kind": "llm", "model": "sim-model-1",
                      "content": f"thinking about {slug}, turn {turn}",
                      "finish_reason": "tool_calls" if turn < turns - 1 else "stop",
                      "prompt_tokens": ptok // turns, "completion_tokens": ctok // turns,
                      "latency_s": 0.2, "cost_usd": 1e-6 * (ptok + ctok) / turns})
        if turn < turns - 1:
            steps.append({"index": 2 * turn + 1, "kind": "tool", "tool_name": "bash",
                          "tool_call_id": f"call-{turn}",
                          "tool_args": json.dumps({"cmd": f"cat /data/{slug}/{turn}.txt"}),
                          "tool_result": f"contents of {turn}.txt for {slug}",
                          "is_error": False})
    return {
        "run_id": "", "rollout_key": key, "slug": slug, "env": "sim",
        "template_id": f"tmpl-{task % 5}", "args": json.dumps({"i": task}),
        "group_id": slug + (f"@{variant}" if variant else ""), "repeat": repeat,
        "variant": variant, "agent": "sim-agent", "provider": "sim",
        "sandbox_id": f"sb-{i}", "worker_id": f"w{i % 8}", "node_id": f"node{i % 3:02d}",
        "status": status, "error_type": etype, "error_message": msg,
        "attempts": 1 + (rng.random() < 0.03), "reward": (1.0 if solved else 0.0) if not fail else None,
        "grade": json.dumps({"reward": 1.0 if solved else 0.0}), "answer": f"answer {i}",
        "prompt": f"Solve {slug} (variant {variant})", "steps": None, "columns": None,
        "queued_at": t0, "started_at": finished - timedelta(seconds=total),
        "finished_at": finished, **phases, "total_s": total, "sandbox_seconds": total,
        "n_turns": turns, "n_tool_calls": max(0, turns - 1), "n_tool_errors": 0,
        "prompt_tokens": ptok, "completion_tokens": ctok, "model": "sim-model-1",
        "stop_reason": "stop" if turns else None, "llm_s": 0.2 * turns, "llm_wait_s": 0.0,
        "cost_usd": 1e-6 * (ptok + ctok), "_steps": [{**s, "rollout_key": key} for s in steps],
    }


def write_run(run_dir: Path, rows: int, *, variants: tuple[str | None, ...] = (None,),
              tasks: int | None = None, seed: int = 0, close: bool = True,
              flush_rows: int = 2000) -> ResultWriter:
    """A run of `rows` rollouts split over `variants` (paired by task); returns the writer
    (still open when `close` is False, for a test that adds rows to a live run)."""
    writer = ResultWriter(run_dir, config={"tasks": "synthetic", "agent": "sim-agent",
                                           "provider": "sim"}, flush_rows=flush_rows)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    per = rows // len(variants)
    tasks = tasks or per
    for v_index, variant in enumerate(variants):
        for i in range(per):
            writer.add(rollout_row(i, variant=variant, tasks=tasks, skill=0.6 + 0.15 * v_index,
                                   seed=seed, t0=t0))
    writer.flush()
    if close:
        writer.close()
    return writer
