"""An agent whose answer is not JSON, through `hud-ray run` on Ray workers: each rollout
is one `agent_error` row naming the type, tried once (issue 16 item 5)."""

from __future__ import annotations

import pytest

from hud_ray.results import read_results

from .conftest import REPO, cli, kill_tree


@pytest.mark.slow
def test_answer_that_is_not_json_is_agent_error_through_the_cli(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    demo = (REPO / "examples" / "demo" / "tasks.jsonl").read_text().splitlines()[:4]
    tasks.write_text("\n".join(demo) + "\n")
    driver = cli("run", str(tasks), "--agent", "tests/fakes/agents.py:set_answer_agent",
                 "--provider-opt", f"env_file={REPO / 'examples/demo/env.py'}",
                 "--concurrency", "2", "--workers", "1", "--out", str(tmp_path / "runs"),
                 "--run-id", "answers", "--no-progress")
    try:
        _, stderr = driver.communicate(timeout=300)
    finally:
        kill_tree(driver)
    assert driver.returncode == 0, stderr[-3000:]
    rows = read_results(tmp_path / "runs" / "answers").to_pylist()
    assert len(rows) == 4
    for row in rows:
        assert row["status"] == "agent_error" and row["attempts"] == 1, row
        assert row["error_message"].startswith(
            "the agent's answer (set) is not JSON-serialisable: Object of type set"), row
