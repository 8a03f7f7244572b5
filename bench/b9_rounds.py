"""`python -m bench.b9_rounds [ROUNDS]`: B9's synchronous loop and rollout source at
staleness 1, back to back, ROUNDS times (default 3) in one Ray session; one JSON line per
round. A single B9 run samples the synchronous loop's long tail only ten times, so its
ratio swings from run to run; this gives the spread and the mean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .__main__ import _prepare_env
from .b9_rl import _async_loop, _sync_loop
from .common import OUT, raise_nofile, start_ray

STEPS, PER_STEP, N, SLOTS, TRAIN_S = 10, 8, 8, 64, 1.0  # B9's full size


def main(rounds: int) -> None:
    out = Path(OUT) / "b9_rounds"
    out.mkdir(parents=True, exist_ok=True)
    _prepare_env(out)
    raise_nofile()
    start_ray()
    syncs, sources = [], []
    for i in range(rounds):
        sync = _sync_loop(out / f"sync{i}", STEPS, PER_STEP, N, SLOTS, TRAIN_S)
        source = _async_loop(out / f"s1-{i}", STEPS, PER_STEP, N, SLOTS, TRAIN_S, 1)
        syncs.append(sync["wall_s"])
        sources.append(source["wall_s"])
        print(json.dumps({"round": i, "sync_wall_s": round(sync["wall_s"], 1),
                          "staleness1_wall_s": round(source["wall_s"], 1),
                          "ratio": round(sync["wall_s"] / source["wall_s"], 2),
                          "stale_dropped": source["stats"]["stale_dropped"]}), flush=True)
    print(json.dumps({"rounds": rounds, "ratio_of_mean_walls":
                      round(sum(syncs) / sum(sources), 2)}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
