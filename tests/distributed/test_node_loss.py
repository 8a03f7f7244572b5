"""Node loss: a node removed mid-run → its rollouts rerun on the survivors, its sandboxes
reaped, 0 lost, 0 duplicated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO, env_server_pids, wait_for

DEMO = REPO / "examples" / "demo"


@pytest.mark.slow
@pytest.mark.parametrize("governor", ["governor", "no-governor"])
def test_node_removed_mid_run(tmp_path, governor):
    """Without a governor the driver alone must find the lost worker's sandboxes, warm
    ones included (they carry its worker label); with one, it must not lose its ledger."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join((DEMO / "tasks.jsonl").read_text().splitlines()[:48]) + "\n")
    state = tmp_path / "state"
    env = {**os.environ, "HUD_RAY_STATE_DIR": str(state), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    agent = f"{REPO / 'tests/fakes/agents.py'}:slow_rule_agent"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests/distributed/node_loss_driver.py"), str(tasks),
         str(tmp_path / "runs"), agent, str(DEMO / "env.py"), governor],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(set(summary["placement"])) == 2, "workers should be spread over both nodes"
    assert summary["rows"] == summary["keys"] == 48
    assert summary["statuses"] == ["ok"]
    assert summary["in_flight"] and summary["retried"], "the lost rollouts rerun"
    # An in-flight rollout either reran elsewhere or had finished on the victim (its
    # result already on its way) between the snapshot and the node's removal.
    for key, (attempts, node) in summary["in_flight_rows"].items():
        assert (attempts > 1 and node != summary["victim"]) or (
            attempts == 1 and node == summary["victim"]), (key, attempts, node, summary)
    assert set(summary["in_flight_rows"]) == set(summary["in_flight"])
    assert summary["victim"] not in summary["final_nodes"]
    wait_for(lambda: not env_server_pids(state), 30, "the lost node's env servers reaped")
