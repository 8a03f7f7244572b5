"""Metrics reach Prometheus: read back from the node's metrics agent after a run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_metrics_read_back_from_the_metrics_agent(tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(20)))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(REPO / "tests/distributed/metrics_driver.py"),
                           str(tasks), str(tmp_path / "runs")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = [line for line in lines if re.match(r'ray_hud_ray_rollouts_total\S*\{.*status="ok"', line)]
    assert ok and float(ok[0].rsplit(" ", 1)[1]) == 20.0, ok
    phases = {m.group(1) for line in lines
              if (m := re.match(r'ray_hud_ray_phase_seconds_count\{.*phase="(\w+)"', line))}
    assert {"provision", "ready", "start", "agent", "grade", "teardown"} <= phases
    assert any(line.startswith("ray_hud_ray_live_sandboxes") for line in lines)
    assert any(line.startswith("ray_hud_ray_governor_create_rate") for line in lines)
