"""Bad inputs that stop a run already going (docs/bad-inputs.md): one line
`hud-ray: run stopped: ...` naming the thing, exit 1, every row written so far kept, the
manifest `aborted` — and a resume after the fix runs only what is missing.

The plan-time scan covers PRESCAN_ROWS rows (200k); to reach the streaming check with a
small file the driver runs with it lowered to 2. Ray is real (a private local one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hud_ray.results import read_manifest, read_results

from .test_bad_inputs_cli import DEMO_ENV, REPO, cli_env

LOW_PRESCAN_CLI = r"""
import os, sys
from hud_ray import preflight
preflight.PRESCAN_ROWS = int(os.environ["TEST_PRESCAN_ROWS"])
from hud_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def drive(tmp_path: Path, tasks: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(RAY_ADDRESS="local", TEST_PRESCAN_ROWS="2",
                  HUD_RAY_STATE_DIR=os.environ["HUD_RAY_STATE_DIR"])
    return subprocess.run(
        [sys.executable, "-c", LOW_PRESCAN_CLI, "run", str(tasks), "--agent", "rule",
         "--provider-opt", f"env_file={DEMO_ENV}", "--concurrency", "1", "--out",
         str(tmp_path / "runs"), "--run-id", "r", "--no-progress", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def reverse(word: str, **row: object) -> str:
    return json.dumps({"env": "demo", "id": "reverse", "args": {"word": word}, "slug": word,
                       **row})


GOOD = [reverse(w) for w in ("alpha", "bravo", "charlie", "delta")]
LAST = reverse("echo")


@pytest.mark.slow
@pytest.mark.parametrize("bad_row, named", [
    ('{"env": "demo", "id": "reverse", "args": {"word": "foxtrot"}, ',
     "{tasks}:5: malformed JSON"),
    (reverse("foxtrot", runtime_config={"resources": {"gpu": {"count": 1}}}),
     "task 'foxtrot' (task file line 5): provider 'local' cannot honour "
     "runtime_config.resources.gpu"),
], ids=["malformed-row", "gpu-task-on-local"])
def test_bad_row_past_the_plan_time_scan_stops_the_run_keeping_its_rows(tmp_path, bad_row, named):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join([*GOOD, bad_row, LAST]) + "\n")
    done = drive(tmp_path, tasks)

    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    stopped = [line for line in done.stderr.splitlines() if line.startswith("hud-ray: ")]
    assert len(stopped) == 1, done.stderr[-3000:]
    assert stopped[0].startswith("hud-ray: run stopped: "), stopped
    assert named.format(tasks=tasks) in stopped[0], stopped
    assert stopped[0].endswith("(rows written so far are kept)")

    run_dir = tmp_path / "runs" / "r"
    rows = read_results(run_dir).to_pylist()
    assert sorted(r["slug"] for r in rows) == ["alpha", "bravo", "charlie", "delta"]
    assert all(r["status"] == "ok" and r["reward"] == 1.0 for r in rows), rows
    manifest = read_manifest(run_dir)
    assert manifest["state"] == "aborted" and named.format(tasks=tasks) in manifest["error"]

    if "malformed" not in named:
        return
    # Fixed, then resumed: only the missing rollouts run; the first four rows stay as written.
    tasks.write_text("\n".join([*GOOD, reverse("foxtrot"), LAST]) + "\n")
    again = drive(tmp_path, tasks, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    after = read_results(run_dir).to_pylist()
    assert sorted(r["slug"] for r in after) == sorted(
        ["alpha", "bravo", "charlie", "delta", "foxtrot", "echo"])
    first = {r["rollout_key"]: r["started_at"] for r in rows}
    assert {r["rollout_key"]: r["started_at"] for r in after if r["rollout_key"] in first} == first
    assert read_manifest(run_dir)["state"] == "finished"


# --- a broken env: the first sandbox tells, the run stops ----------------------------------

BROKEN_ENV = '''
import os

with open({starts!r}, "a") as log:  # one line per import of this file
    log.write(f"{{os.getpid()}}\\n")

from hud.environment import Environment
import fastmcp_plugin_that_is_not_installed

env = Environment(name="broken")
'''


@pytest.mark.slow
def test_env_that_cannot_import_stops_the_run_after_one_sandbox(tmp_path):
    starts = tmp_path / "imports.log"
    env_file = tmp_path / "env.py"
    env_file.write_text(BROKEN_ENV.format(starts=str(starts)))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"env": "broken", "id": "count", "args": {"n": i}})
                             + "\n" for i in range(40)))
    env = cli_env(RAY_ADDRESS="local", HUD_RAY_STATE_DIR=os.environ["HUD_RAY_STATE_DIR"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "hud_ray.cli", "run", str(tasks), "--agent", "nop",
         "--concurrency", "8", "--warm", "0", "--out", str(tmp_path / "runs"), "--run-id", "r",
         "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    assert proc.stderr is not None
    lines, started_at = [], None
    for line in proc.stderr:  # the run starts once Ray is up and the plan printed its dir
        lines.append(line.rstrip())
        if line.startswith("run directory:"):
            started_at = time.monotonic()
    code = proc.wait(timeout=120)
    stopped_after_s = time.monotonic() - started_at if started_at else None
    print(f"broken env: run stopped {stopped_after_s:.1f}s after it started")
    ours = [line for line in lines if line.startswith("hud-ray:")]
    assert code == 1, lines
    assert len(ours) == 1 and ours[0].startswith("hud-ray: run stopped: the env failed to "
                                                 "start in the run's first sandbox"), lines
    assert (f"{env_file}:8: ModuleNotFoundError: No module named "
            "'fastmcp_plugin_that_is_not_installed'") in ours[0]
    assert "Traceback" not in "\n".join(lines)
    # One sandbox tried, once: no fan-out, no retries (the zygote's import is the only one).
    assert starts.read_text().count("\n") == 1, starts.read_text()
    assert read_results(tmp_path / "runs" / "r").num_rows == 0  # nothing ran: resume runs all
    assert read_manifest(tmp_path / "runs" / "r")["state"] == "aborted"
    # ≈ 3 s on a quiet 2-core machine; the bound leaves room for a loaded CI box.
    assert stopped_after_s is not None and stopped_after_s < 15, stopped_after_s


@pytest.mark.slow
def test_ctrl_c_during_a_run_whose_every_create_fails_ends_cleanly(tmp_path):
    """Issue 20, suspected: one segfault on Ctrl-C during a `create_fail_rate=1` sim run,
    manifest left "running". A real SIGINT to the CLI, three times: exit 130, one line,
    no fatal signal, manifest `interrupted`."""
    import signal

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"env": "sim", "id": "t", "args": {"i": i}}) + "\n"
                             for i in range(500)))
    env = cli_env(RAY_ADDRESS="local", HUD_RAY_STATE_DIR=os.environ["HUD_RAY_STATE_DIR"])
    for attempt in range(3):
        run_dir = tmp_path / "runs" / f"c{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "hud_ray.cli", "run", str(tasks), "--agent", "nop",
             "--provider", "sim", "--provider-opt", "create_fail_rate=1",
             "--provider-opt", f"account=ctrlc-{attempt}-{os.getpid()}", "--concurrency", "16",
             "--out", str(tmp_path / "runs"), "--run-id", f"c{attempt}", "--no-progress"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:  # the run has started once the plan printed its dir
            if line.startswith("run directory:"):
                break
        # Retries are under way once the manifest shows the run and a second has passed.
        deadline = time.monotonic() + 60
        while not (run_dir / "manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
        assert code == 130, (attempt, code, rest[-2000:])  # not -11 (SIGSEGV) or -6
        assert "interrupted" in rest and "Segmentation" not in rest, rest[-2000:]
        assert read_manifest(run_dir)["state"] == "interrupted"
