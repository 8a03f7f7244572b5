"""A rollout source takes its Ray workers from hud_ray.pool (the ordinary scheduler's
path): a trainer that closes a source and opens the next (a new run, an eval between
training phases) gets the same worker processes, not new ones."""

from __future__ import annotations

import uuid

from hud_ray.pool import worker_pool
from hud_ray.rl import RolloutSource

AGENTS = "tests/fakes/rl_agents.py"


def _one_source(tmp_path, account: str, name: str) -> set[str]:
    source = RolloutSource(f"{AGENTS}:coin_agent", provider="sim", out=tmp_path / name,
                           concurrency=4, workers=2, warm=0,
                           provider_options={"account": account, "flush_s": "0"})
    for i in range(3):
        source.submit({"env": "sim", "id": "t", "slug": f"t{i}", "args": {"answer": "a"}}, n=2)
    taken = []
    for group in source:
        taken.append(group)
        source.ack(group.group_id)
        if len(taken) == 3:
            source.close()
    assert all(m.status == "ok" for g in taken for m in g.members)
    return {m.row["worker_id"] for g in taken for m in g.members}


def test_a_second_source_reuses_the_first_ones_workers(ray_local, tmp_path):
    account = f"rl-{uuid.uuid4().hex[:6]}"
    first = _one_source(tmp_path, account, "one")
    assert worker_pool().idle_count() >= len(first) >= 1
    second = _one_source(tmp_path, account, "two")
    assert second <= first, "the second source ran on the first one's kept workers"
