"""B9's reference: the same GRPO workload under a zero-overhead model, computed.

What bounds B9's ratio is the workload and the staleness rule, not the executor: with
long-tailed rollouts a synchronous step waits for the slowest of its B·n rollouts, and the
rollout source at `max_staleness` S keeps the groups emitted plus running under
(version + S + 1)·B (the capacity rule, as `hud_ray.rl.staleness.may_start`), its
members on free slots in FIFO order, and drops a group that is over the bound. This model plays both loops with no
cost but the rollouts' own durations and the trainer's step, so the measured rows can be
read against what any executor following the same rules could get.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    steps: int
    groups_per_step: int
    group_size: int
    slots: int
    train_s: float
    cold_start_s: float = 0.2  # these four as the sim provider's options of the same name
    mu: float = 0.0
    sigma: float = 1.0
    max_s: float = 20.0

    def draw(self, rng: random.Random) -> float:
        return self.cold_start_s + min(rng.lognormvariate(self.mu, self.sigma), self.max_s)


def sync_wall(w: Workload, rng: random.Random) -> float:
    """Each step waits for its slowest rollout, then trains."""
    per_step = w.groups_per_step * w.group_size
    return sum(max(w.draw(rng) for _ in range(per_step)) + w.train_s for _ in range(w.steps))


def source_wall(w: Workload, rng: random.Random, staleness: int) -> tuple[float, int]:
    """(wall, groups dropped as stale) of the rollout source's loop."""
    goal, b = w.steps * w.groups_per_step, w.groups_per_step
    now, version, trained, admitted, dropped = 0.0, 0, 0, 0, 0
    queue: deque[int] = deque()
    running: list[tuple[float, int]] = []
    started_at: dict[int, int] = {}
    left: dict[int, int] = {}
    ready: deque[int] = deque()
    free, training_until = w.slots, None

    def fill() -> None:
        nonlocal admitted, free
        # hud_ray.rl.staleness.may_start: groups emitted (trained or ready) plus running
        # stay under (version + S + 1)·B; a dropped group frees its place.
        counted = trained + len(ready) + sum(1 for n in left.values() if n > 0)
        while counted < min((version + staleness + 1) * b, goal):
            started_at[admitted], left[admitted] = version, w.group_size
            queue.extend([admitted] * w.group_size)
            admitted, counted = admitted + 1, counted + 1
        while free and queue:
            free -= 1
            heapq.heappush(running, (now + w.draw(rng), queue.popleft()))

    fill()
    while trained < goal:
        if training_until is None:
            while ready:
                group = ready.popleft()
                if version - started_at[group] > staleness:
                    dropped += 1
                    continue
                trained += 1
                if trained % b == 0:
                    training_until = now + w.train_s
                    break
            fill()
        next_end = running[0][0] if running else float("inf")
        if training_until is not None and training_until <= next_end:
            now, training_until, version = training_until, None, version + 1
            fill()
            continue
        if trained >= goal or not running:
            break
        now, group = heapq.heappop(running)
        free += 1
        left[group] -= 1
        if left[group] == 0:
            if version - started_at[group] <= staleness:
                ready.append(group)
            else:
                dropped += 1
        fill()
    return now, dropped


DRAWS = 300


def expected(w: Workload, staleness_levels: tuple[int, ...], draws: int = DRAWS,
             seed: int = 0) -> dict[str, float]:
    """Mean walls over `draws` workloads: 'sync' and 'S<k>' per staleness level."""
    out = {"sync": statistics.mean(sync_wall(w, random.Random(seed + 10_000 + i))
                                   for i in range(draws))}
    for s in staleness_levels:
        out[f"S{s}"] = statistics.mean(source_wall(w, random.Random(seed + i), s)[0]
                                       for i in range(draws))
    return out
