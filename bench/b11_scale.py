"""B11 scale: B1's zero-work sim rollouts, 100,000 of them, on a 3-raylet Ray cluster on
this machine (`ray.cluster_utils.Cluster`: a head and two nodes, one CPU each).

The tasks come from a JSONL file (streamed, as a user's would), and a sampler in the
driver notes, every 0.25 s, the rollouts finished, the driver's RSS and the part files on
disk, plus the CPU of the driver and its Ray process tree. Reported: the rate and CPU per
rollout of each 20,000-rollout block (flat = the last block's rate over the rate of the
block from row 20,000 on), the driver's RSS growth from the 20,000th row to the last, and the number
of Parquet files during the run and after the writer's close (compaction).

The run owns its Ray cluster, so it runs in a child process: `python -m bench.b11_scale
child N OUT` prints one JSON line.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .common import Bench, Row, loadavg

BLOCK = 20_000
TARGET_RSS_MB = 50.0
TARGET_FLAT = 0.9  # last block's rate ≥ 90 % of the one starting at row BLOCK


def run(out: Path, quick: bool) -> Bench:
    n = 20_000 if quick else 100_000
    block = n // 5
    bench = Bench("B11", "scale (zero-work sim rollouts on 3 raylets)", "rollouts/s",
                  f"rate flat from {block:,} to {n:,} (last block ≥ {TARGET_FLAT:.0%} of the "
                  f"one from row {block:,}), driver RSS growth ≤ {TARGET_RSS_MB:.0f} MB, Parquet files bounded",
                  params={"rollouts": n, "slots": 512, "nodes": 3, "block": block})
    out.mkdir(parents=True, exist_ok=True)
    load0 = loadavg()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH"))
        if p)}
    done = subprocess.run([sys.executable, "-m", "bench.b11_scale", "child", str(n), str(out),
                           str(block)], capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"B11 child failed ({done.returncode}): {done.stderr[-2000:]}")
    res = json.loads(lines[-1])
    rates = res["block_rates"]
    cpu_ms = res["block_cpu_ms"]
    for i, rate in enumerate(rates):
        bench.rows.append(Row(f"hud_ray, rollouts {i * block:,}-{(i + 1) * block:,}", rate,
                              "rollouts/s", ratio=rate / rates[1] if rates[1] else None,
                              extra={"cpu_ms_per_rollout": cpu_ms[i]},
                              note=f"{cpu_ms[i]:.2f} ms CPU per rollout (driver + Ray tree)",
                              load=(load0, loadavg())))
    growth = res["rss_growth_mb"]
    bench.rows.append(Row(f"driver RSS growth, row {block:,} to {n:,}", growth, "MB",
                          metric="driver RSS growth", extra={"rss_mb": res["rss_mb"]}))
    bench.rows.append(Row("Parquet files: most on disk during the run", res["max_parts"],
                          "files", metric="Parquet files"))
    bench.rows.append(Row("Parquet files after close (compacted)", res["final_parts"], "files",
                          metric="Parquet files", extra={"rows": res["rows"], "statuses": res["statuses"]}))
    flat = rates[-1] / rates[1] if rates[1] else 0.0
    bench.met = flat >= TARGET_FLAT and growth <= TARGET_RSS_MB and res["final_parts"] <= 2
    bench.verdict = (
        f"{n:,} rollouts at {res['rate']:,.0f}/s overall on 3 raylets; last block "
        f"{flat:.0%} of the rate from row {block:,} (CPU per rollout {cpu_ms[1]:.2f} ms there, "
        f"{cpu_ms[-1]:.2f} ms in the last block; {cpu_ms[0]:.2f} ms in the first); driver RSS +{growth:.1f} MB from row {block:,} to the "
        f"end; {res['max_parts']} part files at most during the run, {res['final_parts']} "
        f"after close; {res['rows']:,} rows read back.")
    return bench


def _child(n: int, out: Path, block: int) -> None:
    import psutil
    import ray
    from ray.cluster_utils import Cluster

    from hud_ray.api import plan_run
    from hud_ray.results import PARTS_DIR, read_results

    from .runners import statuses
    from .workloads import zero_work

    tasks = out / "tasks.jsonl"
    with tasks.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n")
    os.environ["HUD_RAY_STATE_DIR"] = str(out / "state")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        plan = plan_run(str(tasks), "nop", "sim", concurrency=512, out=out / "runs",
                        run_id="scale", progress=False,
                        provider_options={**zero_work(), "account": "b11"})
        sched, parts_dir = plan.scheduler, plan.run_dir / PARTS_DIR
        me = psutil.Process()
        samples: list[tuple[float, int, float, int, float]] = []
        stop = threading.Event()
        cpu_seen: dict[tuple[int, float], float] = {}

        def tree_cpu_s() -> float:
            """CPU of the driver and every descendant (workers, raylets, GCS) so far; a
            process that ended keeps its last reading."""
            for proc in [me, *me.children(recursive=True)]:
                try:
                    t = proc.cpu_times()
                    cpu_seen[(proc.pid, proc.create_time())] = t.user + t.system
                except psutil.Error:
                    pass
            return sum(cpu_seen.values())

        def sample() -> None:
            while not stop.is_set():
                files = len(list(parts_dir.glob("part-*.parquet"))) if parts_dir.exists() else 0
                samples.append((time.perf_counter(), sched._finished,
                                me.memory_info().rss / 2**20, files, tree_cpu_s()))
                stop.wait(0.25)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        for _ in plan.stream():
            pass
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
        rows = read_results(plan.run_dir, columns=["rollout_key", "status"]).to_pylist()

        def at(k: int) -> tuple[float, int, float, int, float]:
            return next(s for s in samples if s[1] >= k)

        marks = [at(max(1, i * block)) for i in range(n // block)] + [at(n)]
        rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(marks)]
        # CPU per rollout per block: what the code costs, whatever the neighbours' load
        cpu_ms = [1000 * (b[4] - a[4]) / (b[1] - a[1]) for a, b in itertools.pairwise(marks)]
        print(json.dumps({
            "rate": n / wall, "block_rates": rates, "block_cpu_ms": cpu_ms, "rows": len(rows),
            "statuses": statuses(rows),
            "rss_mb": [round(s[2], 1) for s in marks],
            "rss_growth_mb": max(s[2] for s in samples if s[1] >= block) - at(block)[2],
            "max_parts": max(s[3] for s in samples),
            "final_parts": len(list(parts_dir.glob("part-*.parquet"))),
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    if sys.argv[1:2] != ["child"]:
        raise SystemExit("usage: python -m bench.b11_scale child N OUT BLOCK")
    _child(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
