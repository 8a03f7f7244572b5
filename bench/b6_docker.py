"""B6: the docker provider, with and without warm-ahead, against the `local` provider in
the same run, on the demo env with a 0.5 s agent.

Rows: rollouts/s (the primary metric) and, in the notes, provision+ready p50 per rollout
(the container start a rollout waits for). Warm-ahead's share of container start hidden =
1 - p50(warm) / p50(cold); the issue's target is ≥ 90 %. hud's `DockerRuntime` publishes
its server's port (`-p`), which needs a bridge network; where the daemon has none
(`dockerd --bridge=none`, as here) that row says so instead of a number.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from providers.docker import images
from providers.docker.daemon import Daemon
from providers.docker.options import default_docker_host

from .common import REPO, Bench, Row, loadavg
from .runners import hud_ray_run, statuses

DEMO = REPO / "examples" / "demo"
TAG = "hudray-demo:bench"
BASE_IMAGES = ("local/python-base:latest", "python:3.11-slim")
TARGET_HIDDEN = 0.90


def _tasks(n: int) -> list[dict[str, Any]]:
    import json

    lines = (DEMO / "tasks.jsonl").read_text().splitlines()
    return [json.loads(lines[i % len(lines)]) | {"slug": f"b6-{i}"} for i in range(n)]


def _image(daemon: Daemon) -> str | None:
    base = next((b for b in BASE_IMAGES if daemon.has_image(b)), None)
    if base is None:
        return None
    images.build(daemon, str(DEMO), TAG, {"BASE_IMAGE": base}, lambda line: None)
    return TAG


def _p50_start(rows: list[dict[str, Any]]) -> float:
    return statistics.median((r["provision_s"] or 0.0) + (r["ready_s"] or 0.0) for r in rows)


def run(out: Path, quick: bool) -> Bench:
    n, slots = (16, 4) if quick else (96, 8)
    bench = Bench("B6", "docker provider ± warm-ahead vs local (0.5 s agent)", "rollouts/s",
                  f"warm-ahead hides ≥ {TARGET_HIDDEN:.0%} of container start",
                  params={"rollouts": n, "slots": slots, "agent": "bench.agents:half_second"})
    daemon = Daemon(default_docker_host())
    try:
        daemon.ping()
    except Exception as exc:
        bench.skipped = f"no Docker daemon: {exc}"
        return bench
    tag = _image(daemon)
    if tag is None:
        bench.skipped = f"no base image ({', '.join(BASE_IMAGES)}): run setup-docker.sh"
        return bench
    contenders = [("hud_ray docker, warm-ahead", "docker", {"image": tag}, None),
                  ("hud_ray docker, warm=0", "docker", {"image": tag}, 0.0),
                  ("hud_ray local (zygote)", "local", {"env_file": str(DEMO / "env.py")}, None)]
    starts: dict[str, float] = {}
    for label, provider, options, warm in contenders:
        load0 = loadavg()
        res = hud_ray_run(_tasks(n), slots, options, out / label.replace(" ", "_"),
                          agent="bench.agents:half_second", provider=provider,
                          run_id=f"b6-{len(bench.rows)}", warm=warm)
        rows = res["rows"]
        ok = sum(1 for r in rows if r["status"] == "ok")
        starts[label] = _p50_start(rows)
        teardown_p50 = statistics.median(r["teardown_s"] or 0.0 for r in rows)
        bench.rows.append(Row(label, n / res["wall_s"], "rollouts/s", load=(load0, loadavg()),
                              note=f"provision+ready p50 {starts[label] * 1000:.0f} ms, "
                                   f"teardown p50 {teardown_p50 * 1000:.0f} ms; "
                                   f"{ok}/{n} ok; wall {res['wall_s']:.1f} s",
                              extra={"statuses": statuses(rows), "wall_s": res["wall_s"],
                                     "provision_ready_p50_s": starts[label],
                                     "teardown_p50_s": teardown_p50}))
    bridge = daemon.has_bridge()
    bench.rows.append(Row(
        "hud DockerRuntime (same image)", None, "rollouts/s",
        note=("not run: it publishes the env's port with -p, and this daemon has no bridge "
              "network (dockerd --bridge=none) to publish it on" if not bridge else
              "not run: DockerRuntime serves hud env images (hud inside the image), which "
              "this demo image is not")))
    warm, cold = starts["hud_ray docker, warm-ahead"], starts["hud_ray docker, warm=0"]
    hidden = 1.0 - warm / cold if cold > 0 else 0.0
    best = bench.rows[0]
    for row in bench.rows[1:]:
        if row.value:
            row.ratio = best.value / row.value  # >1: docker with warm-ahead is faster
    bench.met = hidden >= TARGET_HIDDEN
    bench.notes.append("provision+ready leaves out a slot's wait for a warm container still "
                       "starting, and teardown (force-remove) stays on the slot's path: the "
                       "walls compare the whole cost")
    bench.verdict = (f"container start (provision+ready p50) {cold * 1000:.0f} ms cold, "
                     f"{warm * 1000:.0f} ms with warm-ahead: {hidden:.0%} hidden.")
    return bench
