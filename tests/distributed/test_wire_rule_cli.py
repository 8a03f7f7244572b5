"""The wire rule through `hud-ray run` on Ray workers (issue 20 item 10): an env server
answering `hello` or `tasks.start` with garbage gives an `env_error` row, tried once."""

from __future__ import annotations

import json
import sys

import pytest

from hud_ray.results import read_results

from .conftest import REPO, cli, kill_tree


@pytest.mark.slow
def test_garbage_at_hello_and_at_start_is_env_error_tried_once(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"env": phase, "id": "any", "slug": phase}) + "\n"
                             for phase in ("hello", "start")))
    command = f"{sys.executable} {REPO / 'tests/fakes/garbage_server.py'} --phase {{env_name}}"
    driver = cli("run", str(tasks), "--agent", "nop", "--provider-opt", f"command={command}",
                 "--provider-opt", "zygote=false", "--concurrency", "2", "--workers", "1",
                 "--out", str(tmp_path / "runs"), "--run-id", "garbage", "--no-progress")
    try:
        _, stderr = driver.communicate(timeout=300)
    finally:
        kill_tree(driver)
    assert driver.returncode == 0, stderr[-3000:]
    rows = {r["slug"]: r for r in read_results(tmp_path / "runs" / "garbage").to_pylist()}
    for phase, method in (("hello", "hello"), ("start", "tasks.start")):
        row = rows[phase]
        assert row["status"] == "env_error" and row["attempts"] == 1, row
        assert row["error_message"].startswith(f"{method}: not JSON: b'HTTP/1.1 400"), row
