"""Resume by content (issue 20 item 6): a task changed under its slug runs again; one task
file is one task file however its path is spelt."""

from __future__ import annotations

import json

from hud_ray.results import read_manifest, read_results

from .conftest import REPO, cli

DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"


def _run(tmp_path, tasks: str, *extra: str) -> str:
    proc = cli("run", tasks, "--agent", "rule", "--concurrency", "3", "--out", "runs",
               "--run-id", "r", "--no-progress", "--provider-opt",
               f"env_file={REPO / 'examples/demo/env.py'}", *extra, cwd=tmp_path)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def test_a_task_changed_under_its_slug_runs_again_on_resume(tmp_path):
    rows = [json.loads(line) for line in DEMO_TASKS.read_text().splitlines()[:6]]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _run(tmp_path, "tasks.jsonl")
    before = {r["rollout_key"]: r for r in read_results(tmp_path / "runs" / "r").to_pylist()}
    assert len(before) == 6

    changed = rows[1]
    assert changed["id"] == "arith"
    changed["args"] = {**changed["args"], "a": 1}  # same slug, another task
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The same file by its absolute path: not "a different config".
    stderr = _run(tmp_path, str(tasks.resolve()), "--resume")

    after = {r["rollout_key"]: r for r in read_results(tmp_path / "runs" / "r").to_pylist()}
    assert set(after) == set(before)
    key = f"{changed['slug']}#0"
    assert json.loads(after[key]["args"])["a"] == 1
    assert after[key]["prompt"] != before[key]["prompt"] and after[key]["status"] == "ok"
    assert after[key]["task_fingerprint"] != before[key]["task_fingerprint"]
    for other in set(before) - {key}:  # unchanged tasks are kept as they ran
        assert after[other]["finished_at"] == before[other]["finished_at"]
    assert sum(read_manifest(tmp_path / "runs" / "r")["counts"].values()) == 6
    named = [line for line in stderr.splitlines() if "ran again because their task changed" in line]
    assert len(named) == 1 and changed["slug"] in named[0], stderr[-3000:]
