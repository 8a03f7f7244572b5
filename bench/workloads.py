"""Workloads shared by every contender: tasks, `sim` options, and the durations they imply.

Every contender runs the same rollouts (same task rows → same rollout keys) under the same
run id, so a cold sandbox gets the same name, `providers.sandbox_name(run_id, key, 1)`, and
the sim draws its cold start and work time from `(seed, name)`: identical durations for
everyone. The durations are computed up front with `SimProvider.fate(name)` and checked
against what each rollout reports (`grade.info.sim_duration_s`).

hud_ray's warm-ahead is the exception: a warm sandbox is created before its rollout is
known, under a name of its own, so it draws other (identically distributed) durations.
Rows that used one are measured against the durations they actually drew.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable
from typing import Any

from hud_ray.tasks import Rollout, expand, tasks_from
from providers import sandbox_name
from providers.sim import SimProvider

RUN_ID = "bench"  # one run id for every contender: same sandbox names, same draws


def sim_tasks(n: int, template: str = "t") -> list[dict[str, Any]]:
    return [{"env": "sim", "id": template, "args": {"i": i}} for i in range(n)]


def rollouts(tasks: Iterable[dict[str, Any]]) -> list[Rollout]:
    return list(expand(tasks_from(list(tasks))))


def zero_work() -> dict[str, Any]:
    """B1: a rollout is pure protocol — create, hello, start, grade, bye, destroy."""
    return {"seed": 1}


def heavy_tail(seed: int = 7) -> dict[str, Any]:
    """B2/B4: 0.5 s cold start; lognormal work time, median 2 s, sigma 0.6.

    Why these: p99 ≈ 4x the median and the largest of 2,000 draws ≈ 8x — a tail long
    enough that anything which waits for a batch's slowest rollout (Ray Data blocks, a
    static split) loses visibly, yet max d stays far below Σd/N (≈ 90 s for 2,000 x 64
    slots), so the lower bound is set by total work and a good scheduler can get close
    to 1.0. Work happens in `tasks.grade` (the reply waits until start + duration).
    """
    return {"seed": seed, "cold_start_s": 0.5, "duration_mu": math.log(2.0),
            "duration_sigma": 0.6, "work_in": "grade"}


def expected_durations(options: dict[str, Any], rs: list[Rollout],
                       run_id: str = RUN_ID) -> dict[str, tuple[float, float]]:
    """rollout_key → (cold_start_s, work_s) of its first-attempt (cold) sandbox."""
    sim = SimProvider(**{**options, "record": False})
    out = {}
    for r in rs:
        fate = sim.fate(sandbox_name(run_id, r.rollout_key, 1))
        out[r.rollout_key] = (fate.cold_start_s, fate.duration_s)
    return out


def drawn_work_s(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """rollout_key → the work time the sandbox actually drew (from its grade info)."""
    out = {}
    for row in rows:
        grade = row.get("grade")
        if isinstance(grade, str):
            grade = json.loads(grade)
        if grade and "sim_duration_s" in (grade.get("info") or {}):
            out[row["rollout_key"]] = float(grade["info"]["sim_duration_s"])
    return out


def lower_bound(d: list[float], slots: int) -> float:
    """No schedule on `slots` slots beats max(Σd/N, max d)."""
    return max(sum(d) / slots, max(d)) if d else 0.0


def warm_lower_bound(cold_s: float, work: list[float], slots: int) -> float:
    """With cold starts overlapped (warm-ahead), no rollout's work starts before the first
    cold start ends: max(c + Σw/N, c + max w)."""
    return cold_s + lower_bound(work, slots) if work else 0.0


def greedy_makespan(d: list[float], slots: int) -> float:
    """FIFO list scheduling with zero overhead: each rollout, in order, takes the slot
    that frees first. The best any dispatcher that does not know durations can expect."""
    free = [0.0] * slots
    heapq.heapify(free)
    end = 0.0
    for x in d:
        t = heapq.heappop(free) + x
        end = max(end, t)
        heapq.heappush(free, t)
    return end
