"""More plan-time bad inputs (issue 16 item 5), through the real CLI with Ray fenced off:
one `hud-ray: error:` line naming the thing, exit 2, no run directory."""

from __future__ import annotations

import json
import socket
import time

from hud_ray.wire import FRAME_LIMIT_BYTES
from tests.test_bad_inputs_cli import (
    DEMO_ENV,
    DEMO_TASKS,
    assert_one_error,
    cli_env,
    good,
    hud_ray,
    run_error,
    write_rows,
)

ENV_OPT = ("--provider-opt", f"env_file={DEMO_ENV}")


def test_empty_task_file_is_an_error_not_a_successful_run(tmp_path):
    for name, text in (("tasks.jsonl", ""), ("blank.jsonl", "\n\n"), ("tasks.json", "[]")):
        path = tmp_path / name
        path.write_text(text)
        run_error(tmp_path, str(path), "--agent", "rule", *ENV_OPT,
                  named=(f"{path}: no task rows (the task file is empty)",))


def test_a_50_mb_row_is_named_by_file_and_line_at_plan_time(tmp_path):
    big = good("big")
    big["args"] = {"word": "x" * (50 * 1024 * 1024)}
    path = write_rows(tmp_path / "tasks.jsonl", [good("a"), good("b"), big])
    t0 = time.monotonic()
    line = run_error(tmp_path, str(path), "--agent", "rule", *ENV_OPT,
                     named=(f"{path}:3: task 'big': args are 52428811 bytes as JSON",
                            f"limited to {FRAME_LIMIT_BYTES} bytes (16 MiB)"))
    assert time.monotonic() - t0 < 30, line


def test_a_row_just_under_the_limit_passes_the_size_check(tmp_path):
    # 15 MiB of args is allowed: the scan goes on to line 2, whose error proves it.
    ok = good("ok")
    ok["args"] = {"word": "y" * (15 * 1024 * 1024)}
    path = write_rows(tmp_path / "tasks.jsonl", [ok, "{not json"])
    run_error(tmp_path, str(path), "--agent", "rule", *ENV_OPT,
              named=(f"{path}:2: malformed JSON",))


def test_resume_of_a_run_that_never_existed(tmp_path):
    line = run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", *ENV_OPT,
                     "--run-id", "typo-run", "--resume",
                     named=("--resume: there is no run 'typo-run' in", "drop --resume"))
    assert "manifest.json not found" in line


def test_unknown_template_is_named_at_plan_time_with_the_env_file(tmp_path):
    path = write_rows(tmp_path / "tasks.jsonl",
                      [good("a"), {"env": "demo", "id": "reverse_word", "args": {}, "slug": "rw"}])
    run_error(tmp_path, str(path), "--agent", "rule", *ENV_OPT,
              named=(f"{path}:2: task 'rw': template 'reverse_word' is not in {DEMO_ENV}",
                     "(its templates: arith, count, kv_lookup, reverse, riddle, sort)"))


def test_modal_with_credentials_but_an_unreachable_api_fails_in_seconds(tmp_path):
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = cli_env(MODAL_TOKEN_ID="ak-test0000", MODAL_TOKEN_SECRET="as-test0000",
                  MODAL_SERVER_URL=f"http://127.0.0.1:{port}", HOME=str(tmp_path))
    path = write_rows(tmp_path / "tasks.jsonl", [good("a")])
    run_error(tmp_path, str(path), "--agent", "rule", "--provider", "modal",
              "--provider-opt", "image=python:3.11-slim", env=env,
              named=(f"provider 'modal': cannot reach the Modal API at http://127.0.0.1:{port}",
                     "MODAL_SERVER_URL"))
    done = hud_ray("reap", "--provider", "modal", cwd=tmp_path, env=env)
    assert_one_error(done, "cannot reach the Modal API")
    assert done.seconds < 15, done.seconds


def test_json_task_file_with_tasks_key_but_no_rows(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"tasks": []}))
    run_error(tmp_path, str(path), "--agent", "rule", *ENV_OPT, named=("no task rows",))
