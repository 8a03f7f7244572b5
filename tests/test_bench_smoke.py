"""Keeps the benchmark harness from rotting: `python -m bench --quick --only B4` runs every
B4 contender (hud_ray, hud-style, Ray Data, actor per sandbox) end to end on a tiny
workload and writes its results. Numbers are not checked — only that each contender
ran every rollout and that the measurements are coherent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # starts its own Ray and ≈ 30 Ray actors: a minute or two on 2 cores
@pytest.mark.timeout(600)
def test_bench_quick_b4_runs_every_contender(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "B4",
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["nproc"] >= 1 and results["command"].endswith("--only B4 --out "
                                                                             + str(tmp_path))
    (b4,) = results["benchmarks"]
    assert b4["id"] == "B4" and b4["skipped"] is None
    rows = {r["contender"].split(" ")[0]: r for r in b4["rows"]}
    assert set(rows) >= {"hud_ray", "hud-style", "Ray", "actor", "reference:"}
    reference = [r for r in b4["rows"] if r["contender"].startswith("reference")]
    assert len(reference) == 1 and 0 < reference[0]["value"], reference
    for row in b4["rows"]:
        if row in reference:
            continue
        first_row_s = row["extra"]["first_row_s"]
        first_rollout_s = row["extra"]["first_rollout_total_s"]
        # a row can only land after the first rollout ran
        assert first_row_s is not None and first_rollout_s is not None, row
        assert 0 < first_rollout_s < first_row_s, row
    assert rows["hud_ray"]["value"] == pytest.approx(
        rows["hud_ray"]["extra"]["first_row_s"] - rows["hud_ray"]["extra"]["first_rollout_total_s"])
    assert "| B4 | hud_ray |" in (tmp_path / "results.md").read_text()
    # The second run in the session took the first run's workers (hud_ray.pool).
    (second,) = [r for r in b4["rows"] if "second run" in r["contender"]]
    assert second["extra"]["workers_reused"] >= 1, second
