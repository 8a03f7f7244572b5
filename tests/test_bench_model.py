"""bench/b9_model.py: the zero-overhead reference B9's rows are read against."""

import random

from bench.b9_model import Workload, expected, source_wall, sync_wall

W = Workload(steps=6, groups_per_step=4, group_size=4, slots=16, train_s=0.5)


def test_no_variance_no_tail_source_at_staleness_zero_is_the_sync_loop():
    flat = Workload(steps=5, groups_per_step=2, group_size=4, slots=8, train_s=1.0,
                    cold_start_s=0.0, sigma=0.0)  # every rollout takes exactly 1 s
    assert sync_wall(flat, random.Random(0)) == 5 * (1.0 + 1.0)
    wall, dropped = source_wall(flat, random.Random(0), staleness=0)
    assert wall == 5 * (1.0 + 1.0) and dropped == 0  # as B9's loops: every step trains


def test_staleness_buys_throughput_and_the_capacity_rule_drops_nothing_at_zero():
    walls = expected(W, (0, 1, 4), draws=60)
    assert walls["S4"] < walls["S1"] < walls["S0"]
    assert abs(walls["S0"] - walls["sync"]) / walls["sync"] < 0.15
    # at staleness 0 only the current version's groups are ever started: none goes stale
    assert all(source_wall(W, random.Random(seed), staleness=0)[1] == 0 for seed in range(20))
