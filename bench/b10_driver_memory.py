"""B10: driver memory per million task rows (issue 20, item 8).

A task file of N rows is streamed through `hud_ray.tasks.iter_tasks` — JSONL parsing,
validation and the duplicate-slug registry, what the driver does with every row of a run —
in a fresh process, and the peak memory the rest of the stream holds after a 100k-row
warm-up (the registry lives as long as the stream) is measured with tracemalloc (RSS is too coarse here: the allocator keeps and
returns arenas on its own schedule, so the same run reads ± 50 MiB). Baseline in
the same run: the same stream with the registry the driver used before (a dict of 8-byte
digests, ~117 MiB per million rows). Target: ≤ 10 MiB per million rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .common import Bench, Row, loadavg

TARGET_MIB = 10.0
WARMUP = 100_000

PROBE = r"""
import gc, hashlib, sys, tracemalloc
from hud_ray import tasks

class DictRegistry:  # what the driver kept before: every row's digest in a dict
    def __init__(self, source, locate=None):
        self._seen = {}
    def add(self, slug, line, *, defaulted=False):
        digest = int.from_bytes(hashlib.blake2b(slug.encode(), digest_size=8).digest(), "big")
        self._seen.setdefault(digest, line)

if sys.argv[2] == "dict":
    tasks.SlugRegistry = DictRegistry
rows = tasks.iter_tasks(sys.argv[1])
for _ in range(%(warmup)d):
    next(rows)
gc.collect()
tracemalloc.start()  # from here: what streaming the rest of the file holds at its peak
for _ in rows:
    pass
print(tracemalloc.get_traced_memory()[1])
"""


def _task_file(path: Path, n: int) -> Path:
    if path.exists() and sum(1 for _ in path.open("rb")) == n and b'"slug"' in \
            path.open("rb").readline():
        return path
    with path.open("w") as f:
        for i in range(n):
            # explicit slugs: hud's default keeps 8 hex digits of sha1(args), which collide
            # past ~100k rows (and the stream stops there, naming both lines)
            f.write(json.dumps({"env": "demo", "id": "count", "slug": f"count-{i}",
                                "args": {"sentence": f"row {i}", "letter": "o"}}) + "\n")
    return path


def _growth(path: Path, registry: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE % {"warmup": WARMUP}, str(path), registry],
                          capture_output=True, text=True, timeout=1800, check=True)
    return int(done.stdout) / 2**20


def run(out: Path, quick: bool) -> Bench:
    n = 300_000 if quick else 1_100_000
    measured = n - WARMUP
    per_million = 1_000_000 / measured
    bench = Bench("B10", "driver memory streaming a large task file",
                  "peak memory held per million rows", f"≤ {TARGET_MIB:.0f} MiB per million rows",
                  params={"rows": n, "warmup_rows": WARMUP})
    out.mkdir(parents=True, exist_ok=True)
    path = _task_file(out / "b10_tasks.jsonl", n)
    for label, registry in (("hud_ray (iter_tasks)", "new"), ("dict registry (before)", "dict")):
        load0 = loadavg()
        growth = _growth(path, registry) * per_million
        bench.rows.append(Row(label, growth, "MiB/1M rows", load=(load0, loadavg())))
    ours, before = bench.rows[0].value, bench.rows[1].value
    bench.rows[1].ratio = before / ours if ours else None
    bench.met = ours <= TARGET_MIB
    bench.verdict = (f"{ours:.1f} MiB per million rows streamed (was {before:.1f} with the "
                     f"dict registry), target ≤ {TARGET_MIB:.0f}.")
    return bench
