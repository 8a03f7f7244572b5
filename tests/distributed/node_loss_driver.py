"""Driver for the node-loss test: a 3-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`: a head and two nodes declaring 8 sandbox slots each), a run
on the local provider, and the node hosting worker 0 removed mid-run. Prints a JSON
summary on its last line. Run as a script: it owns its own Ray cluster. The fifth argument,
`governor` or `no-governor`, says whether an account governor (and its reaper) is there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from hud_ray.api import plan_run
from hud_ray.results import read_results


def main(tasks: str, out: str, agent: str, env_file: str, governor: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1, resources={"sandbox_slots": 8}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        plan = plan_run(tasks, agent, provider="local", concurrency=8, workers=2, out=out,
                        run_id="nodeloss", progress=False, flush_rows=4,
                        retry_backoff_s=0.1, env_file=env_file,
                        governor=governor == "governor")
        stream = plan.stream()
        next(stream)
        victim_worker = plan.scheduler.workers[0]
        node_id = ray.get(victim_worker.actor.ping.remote())["node_id"]
        placement = [ray.get(w.actor.ping.remote())["node_id"] for w in plan.scheduler.workers]
        victim = next(n for n in nodes if n.node_id == node_id)
        in_flight = sorted(victim_worker.inflight)
        cluster.remove_node(victim)
        for _ in stream:
            pass
        rows = read_results(plan.run_dir).to_pylist()
        print(json.dumps({
            "rows": len(rows), "keys": len({r["rollout_key"] for r in rows}),
            "statuses": sorted({r["status"] for r in rows}),
            "in_flight": in_flight,
            "in_flight_rows": {r["rollout_key"]: [r["attempts"], r["node_id"]] for r in rows
                               if r["rollout_key"] in in_flight},
            "retried": sorted(r["rollout_key"] for r in rows if r["attempts"] > 1),
            "placement": placement, "victim": node_id,
            "final_nodes": sorted({r["node_id"] for r in rows if r["attempts"] > 1}),
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:6])
    sys.exit(0 if Path(sys.argv[2]).exists() else 1)
