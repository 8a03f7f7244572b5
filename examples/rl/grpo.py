"""A GRPO-style loop on CPU with hud_ray as the rollout engine.

    python examples/rl/grpo.py --steps 50 --out runs

Each step takes `--groups` complete groups of `--n` rollouts from a `RolloutSource`
(sim sandboxes; the built-in `openai:` agent calls a toy policy server that gets better
with each weight version), computes group-relative advantages, "trains" (asks the server
to load the next weights) between `pause("drain")` and `resume()`, and bumps the policy
version. Rollouts of the next groups keep running while the trainer trains, but no group
trained on started more than `--max-staleness` versions back. One line per step goes to
`<out>/<run_id>/rl/metrics.jsonl`; `plot.ipynb` draws rewards and versions from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_server import MODEL, PolicyServer

from hud_ray.rl import RolloutSource


def advantages(rewards: list[float]) -> list[float]:
    """GRPO: each member's reward against its group's mean, in group standard deviations."""
    mean = statistics.fmean(rewards)
    std = statistics.pstdev(rewards)
    return [(r - mean) / (std + 1e-6) for r in rewards]


def task(i: int) -> dict:
    return {"env": "sim", "id": "say", "slug": f"q{i}", "prompt": "answer with a",
            "args": {"answer": "a"}}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--groups", type=int, default=4, help="groups per step (B)")
    ap.add_argument("--n", type=int, default=8, help="rollouts per group")
    ap.add_argument("--max-staleness", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", default="runs")
    args = ap.parse_args(argv)

    server = PolicyServer().start()
    source = RolloutSource(
        f"openai:{MODEL}", provider="sim", out=args.out, concurrency=args.concurrency,
        agent_config={"base_url": server.base_url, "max_retries": 0},
        policy={"base_url": server.base_url, "model": MODEL},
        staleness={"max_staleness": args.max_staleness, "groups_per_step": args.groups,
                   "over_bound": "drop"},
        provider_options={"account": "grpo-example"})
    metrics_path = source.run_dir / "rl" / "metrics.jsonl"
    submitted = 0

    def top_up() -> None:  # keep enough groups queued for the next steps
        nonlocal submitted
        stats = source.stats()
        while stats["queued"] + stats["running"] + stats["ready"] < 3 * args.groups:
            source.submit(task(submitted), n=args.n)
            submitted += 1
            stats["queued"] += 1

    top_up()
    t0 = time.perf_counter()
    with metrics_path.open("w") as out:
        for step in range(args.steps):
            batch = []
            while len(batch) < args.groups:
                top_up()  # a group dropped as stale leaves a gap: refill before waiting
                batch.append(source.next_group())
            rewards = [m.reward or 0.0 for g in batch for m in g.members]
            starts = [m.version_start for g in batch for m in g.members]
            adv = [a for g in batch for a in advantages([m.reward or 0.0 for m in g.members])]
            source.pause("drain")  # no model call straddles the weight swap
            httpx.post(server.base_url + "/update", timeout=30)  # the "optimizer step"
            source.set_policy(source.version + 1)
            source.resume()
            for g in batch:
                source.ack(g.group_id)
            top_up()
            stats = source.stats()
            record = {"step": step, "version": source.version,
                      "reward_mean": statistics.fmean(rewards),
                      "adv_abs_mean": statistics.fmean(abs(a) for a in adv),
                      "oldest_start": min(starts), "lag_max": step - min(starts),
                      "stale_dropped": stats["stale_dropped"],
                      "wall_s": time.perf_counter() - t0}
            out.write(json.dumps(record) + "\n")
            out.flush()
            print(json.dumps(record), flush=True)
    source.close(cancel=True)
    server.stop()
    return metrics_path


if __name__ == "__main__":
    main()
