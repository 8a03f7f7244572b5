"""`python -m bench [--only B1,B2] [--quick]`: every benchmark against its baselines, in one
run; prints the table and writes bench/out/results.json and results.md.

B1 dispatch · B2 makespan · B3 density · B4 time to first row · B5 local vs hud ·
B6 docker provider ± warm-ahead vs local · B7 LLM-bound sweep (rate-limited endpoint,
governor vs hud's Taskset.run) · B8 hud-ray view on 10k/100k-row runs · B9 RL rollout
source vs a synchronous GRPO loop · B10 driver memory per million task rows · B11 scale:
100,000 B1 rollouts on 3 raylets (rate flat, driver RSS, Parquet files).
`--quick` scales sizes down ≈ 10x (a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .common import OUT, REPO, Bench

ALL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")


def _prepare_env(out: Path) -> None:
    """Before Ray starts: everything its workers must inherit."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray workers import bench.agents / bench.baselines by name.
    path = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    # Sim accounts and local ledgers of this bench only.
    state = out / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    os.environ["HUD_RAY_STATE_DIR"] = str(state)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _runners() -> dict[str, Callable[[Path, bool], Bench]]:
    from . import (
        b1_dispatch,
        b2_makespan,
        b3_density,
        b4_first_row,
        b5_local_vs_hud,
        b6_docker,
        b7_llm_bound,
        b8_viewer,
        b9_rl,
        b10_driver_memory,
        b11_scale,
    )

    return {"B1": b1_dispatch.run, "B2": b2_makespan.run, "B3": b3_density.run,
            "B4": b4_first_row.run, "B5": b5_local_vs_hud.run, "B6": b6_docker.run,
            "B7": b7_llm_bound.run, "B8": b8_viewer.run, "B9": b9_rl.run,
            "B10": b10_driver_memory.run, "B11": b11_scale.run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ALL),
                        help="comma-separated benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="≈ 10x smaller: a smoke run")
    parser.add_argument("--out", type=Path, default=OUT, help="output directory")
    args = parser.parse_args(argv)
    chosen = [b.strip().upper() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in ALL]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(ALL)}")

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _prepare_env(out)
    from .common import (
        cpu_pressure,
        machine,
        python_command,
        raise_nofile,
        start_ray,
        table_lines,
        verdict_lines,
        write_results,
    )

    raise_nofile()
    started = time.perf_counter()
    start_ray()
    info = machine()
    info["ray_init_s"] = round(time.perf_counter() - started, 2)
    runners = _runners()
    benches: list[Bench] = []
    failed = False
    for name in chosen:
        work = out / "work" / name.lower()
        shutil.rmtree(work, ignore_errors=True)
        print(f"== {name} {'(quick) ' if args.quick else ''}…", flush=True)
        t0 = time.perf_counter()
        try:
            bench = runners[name](work, args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            bench = Bench(name, "error", "—", "—", skipped=f"error: {type(exc).__name__}: {exc}")
            failed = True
        bench.wall_s = time.perf_counter() - t0
        benches.append(bench)
        print("\n".join(table_lines([bench])[2:]), flush=True)
    command = python_command()
    info["total_wall_s"] = round(time.perf_counter() - started, 1)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["cpu_pressure_at_end"] = cpu_pressure()
    json_path, md_path = write_results(benches, info, command, out)
    print()
    print("\n".join(table_lines(benches)))
    print()
    print("\n".join(verdict_lines(benches)))
    print(f"\nwrote {json_path} and {md_path} ({info['total_wall_s']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
