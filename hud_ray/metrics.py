"""Ray metrics (`ray.util.metrics`), exported by every node's metrics agent to Prometheus
and shown in the Ray dashboard:

- `hud_ray_rollouts_total{status, provider, run_id}`            counter
- `hud_ray_phase_seconds{phase, provider}`                      histogram
- `hud_ray_live_sandboxes{worker_id, provider}`                 gauge (slots in use + warm)
- `hud_ray_governor_throttled_total{provider, account}`         counter
- `hud_ray_governor_live{provider, account}` / `..._create_rate` gauges

Created lazily inside the process that records (metrics objects are per process), and
never allowed to fail a rollout: recording errors are swallowed.
"""

from __future__ import annotations

import contextlib
from functools import cache
from typing import Any

from hud_ray.schema import PHASES

PHASE_BUCKETS_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800]


@cache
def _metrics() -> dict[str, Any]:
    from ray.util import metrics

    return {
        "rollouts": metrics.Counter(
            "hud_ray_rollouts_total", "Finished rollouts by status",
            tag_keys=("status", "provider", "run_id")),
        "phase": metrics.Histogram(
            "hud_ray_phase_seconds", "Rollout phase latency", boundaries=PHASE_BUCKETS_S,
            tag_keys=("phase", "provider")),
        "live": metrics.Gauge(
            "hud_ray_live_sandboxes", "Sandboxes held by a worker (running + warm)",
            tag_keys=("worker_id", "provider")),
        "throttled": metrics.Counter(
            "hud_ray_governor_throttled_total", "Create requests the governor made wait",
            tag_keys=("provider", "account")),
        "gov_live": metrics.Gauge(
            "hud_ray_governor_live", "Live sandboxes in the governor's ledger",
            tag_keys=("provider", "account")),
        "gov_rate": metrics.Gauge(
            "hud_ray_governor_create_rate", "Current create rate (AIMD)",
            tag_keys=("provider", "account")),
    }


def record_row(row: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        m = _metrics()
        provider = row.get("provider") or ""
        m["rollouts"].inc(1, {"status": row["status"], "provider": provider,
                              "run_id": row.get("run_id") or ""})
        for phase in PHASES:
            value = row.get(f"{phase}_s")
            if value is not None:
                m["phase"].observe(value, {"phase": phase, "provider": provider})


def record_live(worker_id: str, provider: str, live: int) -> None:
    with contextlib.suppress(Exception):
        _metrics()["live"].set(live, {"worker_id": worker_id, "provider": provider})


def record_governor(provider: str, account: str, throttled: int, live: int,
                    rate: float) -> None:
    with contextlib.suppress(Exception):
        m = _metrics()
        tags = {"provider": provider, "account": account}
        if throttled:
            m["throttled"].inc(throttled, tags)
        m["gov_live"].set(live, tags)
        m["gov_rate"].set(rate, tags)
