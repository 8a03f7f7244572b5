"""`hud-ray run --provider-opt "command={python} -m ..."` runs (issue 20 item 9): the
documented placeholder is not mistaken for JSON."""

from __future__ import annotations

import pytest

from hud_ray.results import read_results

from .conftest import REPO, cli, kill_tree


@pytest.mark.slow
def test_documented_command_placeholder_is_accepted(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    demo = (REPO / "examples" / "demo" / "tasks.jsonl").read_text().splitlines()[:2]
    tasks.write_text("\n".join(demo) + "\n")
    command = "{python} -m hud_ray.envkit {env_file} --host 127.0.0.1 --port 0"
    driver = cli("run", str(tasks), "--agent", "rule",
                 "--provider-opt", f"env_file={REPO / 'examples/demo/env.py'}",
                 "--provider-opt", f"command={command}", "--provider-opt", "zygote=false",
                 "--concurrency", "2", "--workers", "1", "--out", str(tmp_path / "runs"),
                 "--run-id", "cmd", "--no-progress")
    try:
        _, stderr = driver.communicate(timeout=300)
    finally:
        kill_tree(driver)
    assert driver.returncode == 0, stderr[-3000:]
    rows = read_results(tmp_path / "runs" / "cmd").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
