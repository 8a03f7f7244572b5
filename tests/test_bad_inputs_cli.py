"""Bad inputs caught at plan time, through the real command line (docs/bad-inputs.md).

Each case runs `hud-ray ...` in a subprocess and expects exactly one stderr line
`hud-ray: error: <names the thing>`, exit code 2, no traceback, no run directory — and
Ray never started: the CLI runs under a guard that fails the test if `ensure_ray` is
called or Ray is initialised by the time the command returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_ENV = REPO / "examples" / "demo" / "env.py"
DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"
# Plan-time errors take ~2 s (Python + imports); the bound is loose for a loaded CI box.
PLAN_BUDGET_S = 30.0

# The real `hud_ray.cli.main`, with Ray fenced off: a plan-time error must never reach it.
GUARDED_CLI = r"""
import os, sys
import hud_ray.api as api
from hud_ray import preflight

def _no_ray(*args, **kwargs):
    sys.stderr.write("GUARD: Ray was started for a bad input\n")
    raise SystemExit(99)

api.ensure_ray = _no_ray
if os.environ.get("TEST_PRESCAN_ROWS"):
    preflight.PRESCAN_ROWS = int(os.environ["TEST_PRESCAN_ROWS"])
from hud_ray.cli import main
try:
    code = main(sys.argv[1:])
finally:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        sys.stderr.write("GUARD: Ray is initialised\n")
        code = 98
sys.exit(code)
"""


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment without cloud credentials or a Ray address."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODAL_", "DAYTONA_")) and k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO), **extra)
    return env


def hud_ray(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Done:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", GUARDED_CLI, *args], cwd=cwd,
                          env=env or cli_env(), capture_output=True, text=True, timeout=120)
    return Done(done.returncode, done.stdout, done.stderr, time.monotonic() - t0)


def assert_one_error(done: Done, *named: str) -> str:
    """Exit 2, one `hud-ray: error:` line naming every `named`, nothing else on stderr."""
    assert "GUARD:" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.code == 2, (done.code, done.stderr)
    assert len(done.lines) == 1, done.stderr
    line = done.lines[0]
    assert line.startswith("hud-ray: error: "), line
    for text in named:
        assert text in line, (text, line)
    assert done.seconds < PLAN_BUDGET_S, done.seconds
    return line


def run_error(tmp_path: Path, *args: str, named: tuple[str, ...],
              env: dict[str, str] | None = None) -> str:
    """`hud-ray run ARGS` must fail at plan time, naming `named`, and write no run dir."""
    out = tmp_path / "runs"
    done = hud_ray("run", *args, "--out", str(out), "--no-progress", cwd=tmp_path, env=env)
    line = assert_one_error(done, *named)
    assert not out.exists(), sorted(out.rglob("*"))
    return line


def write_rows(path: Path, rows: list[object | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good(slug: str, **row: object) -> dict[str, object]:
    return {"env": "demo", "id": "reverse", "args": {"word": slug}, "slug": slug, **row}


ENV_OPT = ("--provider-opt", f"env_file={DEMO_ENV}")


# --- the task file ----------------------------------------------------------------------


def test_task_file_missing_is_named_before_the_provider_looks_beside_it(tmp_path):
    # Without the early check, local complained about env_file instead (no env.py beside it).
    run_error(tmp_path, str(tmp_path / "tasks.jsonl"), "--agent", "rule",
              named=(f"{tmp_path / 'tasks.jsonl'}: task file not found",))


def test_task_file_that_is_a_directory(tmp_path):
    (tmp_path / "tasks.jsonl").mkdir()
    run_error(tmp_path, str(tmp_path / "tasks.jsonl"), "--agent", "rule",
              named=("tasks.jsonl: is a directory, not a task file",))


def test_task_file_of_an_unknown_type(tmp_path):
    (tmp_path / "tasks.csv").write_text("id,args\n")
    run_error(tmp_path, str(tmp_path / "tasks.csv"), "--agent", "rule", *ENV_OPT,
              named=("tasks.csv: unknown task file type", ".jsonl"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_task_file_not_readable(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl", [good("a")])
    tasks.chmod(0)
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=("tasks.jsonl: task file is not readable",))


def test_malformed_row_names_file_and_line_before_any_rollout(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl", [good("a"), good("b"), '{"id": "reverse", ', good("c")])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=(f"{tasks}:3: malformed JSON",))


def test_row_that_is_not_an_object(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl", [good("a"), ["reverse", {"word": "b"}]])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=(f"{tasks}:2: a task row must be a JSON object, got list",))


def test_row_without_an_id_names_the_field(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl", [good("a"), {"env": "demo", "args": {}}])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=(f"{tasks}:2: field 'id'", "Field required"))


def test_duplicate_slugs_name_both_lines(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl",
                       [good("a"), good("b"), good("c"), good("b", args={"word": "other"})])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=("duplicate slug 'b' on lines 2 and 4",))


def test_runtime_config_with_an_unknown_field(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl",
                       [good("a"), good("b", runtime_config={"imagee": "org/env:1"})])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=(f"{tasks}:2: field 'runtime_config.imagee'", "Extra inputs"))


def test_gpu_task_on_the_local_provider_names_the_task_line(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl", [
        good("a"), good("b"),
        good("needs-gpu", runtime_config={"resources": {"gpu": {"type": "A100", "count": 1}}}),
    ])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=(f"{tasks}:3: task 'needs-gpu'", "provider 'local'",
                     "runtime_config.resources.gpu"))


def test_image_task_on_the_local_provider(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl",
                       [good("a"), good("boxed", runtime_config={"image": "org/env:1"})])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=(f"{tasks}:2: task 'boxed'", "cannot run images", "org/env:1"))


# --- the agent ----------------------------------------------------------------------------


def test_unknown_agent_spec_lists_the_forms_and_built_ins(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "gpt-9000",
              named=("agent spec 'gpt-9000'", "pkg.module:attr", "'rule'"))


def test_agent_file_with_a_syntax_error_names_file_and_line(tmp_path):
    agent = tmp_path / "my_agent.py"
    agent.write_text("async def solve(session):\n    return (\n")
    run_error(tmp_path, str(DEMO_TASKS), "--agent", f"{agent}:solve",
              named=(f"{agent}:2: SyntaxError",))


def test_agent_module_without_the_attribute(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "hud_ray.agents.rule:solve",
              named=("hud_ray.agents.rule has no attribute 'solve'",))


# --- the provider -------------------------------------------------------------------------


def test_unknown_provider_lists_the_known_ones(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "dokcer",
              named=("unknown provider 'dokcer'", "local", "modal", "daytona"))


def test_misspelt_provider_option_suggests_the_real_one(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider-opt", "envfile=env.py",
              named=("provider 'local': bad option(s): envfile: Extra inputs are not permitted",
                     "(did you mean 'env_file'?)"))


def test_unknown_provider_option_lists_the_known_ones(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "attach",
              "--provider-opt", "url=tcp://127.0.0.1:9", "--provider-opt", "verbose=1",
              named=("provider 'attach': bad option(s): verbose", "(known options: url)"))


def test_provider_opt_without_equals(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider-opt", "env_file",
              named=("--provider-opt 'env_file': expected KEY=VALUE",))


def test_provider_opt_with_broken_json(tmp_path):
    # JSON only where the option is a dict or list: daytona's env_vars is one.
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "daytona",
              "--provider-opt", "env_vars={a: 1}",
              named=("--provider-opt 'env_vars={a: 1}': the value is not valid JSON",))


def test_local_without_an_env_file(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl", [good("a")])  # no env.py beside it
    run_error(tmp_path, str(tasks), "--agent", "rule",
              named=("provider 'local'", "env_file is required", "--provider-opt env_file=PATH"))


def test_local_env_file_that_does_not_exist(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule",
              "--provider-opt", f"env_file={tmp_path / 'nope.py'}",
              named=("provider 'local'", f"env_file '{tmp_path / 'nope.py'}' not found"))


@pytest.mark.parametrize("options, named", [
    ((), ("provider 'attach'", "url: Field required")),
    (("--provider-opt", "url=http://127.0.0.1:8080"), ("url", "tcp://host:port", "http://")),
    (("--provider-opt", "url=tcp://127.0.0.1:99999"), ("url", "port 99999 is out of range")),
])
def test_attach_with_a_bad_url(tmp_path, options, named):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "attach", *options,
              named=named)


def _no_cloud_home(tmp_path: Path, **extra: str) -> dict[str, str]:
    # The real SDKs read ~/.modal.toml etc.; a loopback URL in case anything dials out.
    return cli_env(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "modal.toml"),
                   MODAL_SERVER_URL="http://127.0.0.1:9", **extra)


def test_modal_without_credentials_names_the_variables(tmp_path):
    pytest.importorskip("modal")
    line = run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "modal",
                     "--provider-opt", "image=python:3.11-slim", env=_no_cloud_home(tmp_path),
                     named=("provider 'modal'", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"))
    assert "no credentials" in line


def test_modal_with_half_the_credentials_names_the_missing_one(tmp_path):
    pytest.importorskip("modal")
    line = run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "modal",
                     "--provider-opt", "image=python:3.11-slim",
                     env=_no_cloud_home(tmp_path, MODAL_TOKEN_ID="ak-test"),
                     named=("provider 'modal': no credentials: MODAL_TOKEN_SECRET not set",))
    assert "ak-test" not in line  # the id is a credential too: never echoed


def test_modal_task_without_an_image_names_the_task_line(tmp_path):
    pytest.importorskip("modal")
    env = _no_cloud_home(tmp_path, MODAL_TOKEN_ID="ak-test", MODAL_TOKEN_SECRET="as-test")
    line = run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "modal",
                     env=env, named=(f"{DEMO_TASKS}:1: task 'count-69551668'",
                                     "provider 'modal': no image", "runtime_config.image"))
    assert "as-test" not in line


def test_daytona_without_an_api_key_names_the_variable(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--provider", "daytona",
              env=_no_cloud_home(tmp_path), named=("provider 'daytona'", "DAYTONA_API_KEY"))


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, named", [
    (("--concurrency", "0"), ("concurrency (--concurrency) must be a whole number >= 1, got 0",)),
    (("--repeats", "0"), ("repeats (--repeats) must be a whole number >= 1, got 0",)),
    (("--workers", "0"), ("workers (--workers) must be a whole number >= 1, got 0",)),
    (("--max-attempts", "0"), ("max_attempts (--max-attempts)", "got 0")),
    (("--timeout", "0"), ("timeout_s (--timeout) must be a number of seconds > 0",)),
    (("--timeout", "nan"), ("timeout_s (--timeout)", "got nan")),
    (("--warm", "-1"), ("warm (--warm) must be a number >= 0",)),
    (("--max-failures", "lots"), ("--max-failures 'lots': expected N or P%",)),
    (("--max-failures", "many%"), ("--max-failures 'many%': expected N or P%",)),
    (("--max-failures", "150%"), ("--max-failures P%", "0% to 100%")),
    (("--concurrency", "eight"), ("argument --concurrency: invalid int value: 'eight'",)),
    (("--governor-opt", "create_rat=5"), ("unknown governor setting(s) create_rat", "create_rate")),
    (("--governor-opt", "create_rate=fast"), ("--governor-opt create_rate='fast': expected a number",)),
    (("--create-rate", "0"), ("governor create_rate (--create-rate) must be a number > 0",)),
    (("--live-cap", "-2"), ("governor live_cap (--live-cap) must be a number > 0",)),
])
def test_a_bad_setting_is_named_by_its_flag(tmp_path, flags, named):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", *flags, named=named)


def test_missing_required_argument_is_one_line_too(tmp_path):
    done = hud_ray("run", str(DEMO_TASKS), cwd=tmp_path)
    assert_one_error(done, "the following arguments are required: --agent", "hud-ray run --help")


def test_resume_without_a_run_id(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", "--resume",
              named=("--resume needs --run-id",))


# --- report / reap ----------------------------------------------------------------------------


def test_report_on_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    assert_one_error(hud_ray("report", str(tmp_path / "notes"), cwd=tmp_path),
                     f"{tmp_path / 'notes'}: no manifest.json (not a hud_ray run directory)")


def test_report_on_a_path_that_does_not_exist(tmp_path):
    assert_one_error(hud_ray("report", str(tmp_path / "runs" / "nope"), cwd=tmp_path),
                     "nope: no such run directory")


def test_report_on_a_run_whose_manifest_is_corrupt(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text('{"run_id": "x", ')
    assert_one_error(hud_ray("report", str(tmp_path / "run"), cwd=tmp_path),
                     "manifest.json: unreadable manifest")


@pytest.mark.parametrize("args, named", [
    (("--provider", "nosuch"), ("unknown provider 'nosuch'",)),
    (("--older-than", "soon"), ("--older-than 'soon': expected e.g. 90s",)),
])
def test_reap_with_bad_arguments(tmp_path, args, named):
    assert_one_error(hud_ray("reap", *args, cwd=tmp_path), *named)


# --- hud task sources and agent configuration (one install: hud is importable) ---------------


def test_tasks_py_raising_on_import_names_its_file_and_line(tmp_path):
    (tmp_path / "env.py").write_text("from hud import Environment\nenv = Environment('e')\n")
    tasks = tmp_path / "tasks.py"
    tasks.write_text("from env import env\n\nraise RuntimeError('dataset missing')\n")
    run_error(tmp_path, str(tasks), "--agent", "nop",
              named=(f"{tasks}:3: RuntimeError: dataset missing", "Taskset.from_file"))


def test_tasks_py_without_tasks(tmp_path):
    (tmp_path / "env.py").write_text("from hud import Environment\nenv = Environment('e')\n")
    tasks = tmp_path / "tasks.py"
    tasks.write_text("from env import env\n")
    run_error(tmp_path, str(tasks), "--agent", "nop", named=("tasks.py: defines no hud Task",))


def test_verifier_on_another_env_is_refused_naming_row_and_field(tmp_path):
    row = good("a", verifier={"env": "grader", "id": "check"})
    tasks = write_rows(tmp_path / "tasks.jsonl", [good("b"), row])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=(f"{tasks}:2: field 'verifier'", "same env ('demo')", "got env 'grader'"))


def test_agent_api_key_variable_unset_is_named_before_any_sandbox(tmp_path):
    env = cli_env()
    env.pop("HUD_RAY_TEST_UNSET_KEY", None)
    run_error(tmp_path, str(DEMO_TASKS), "--agent",
              "hud:hud.agents.openai_compatible:OpenAIChatAgent", *ENV_OPT,
              "--agent-opt", "base_url=http://127.0.0.1:9/v1",
              "--agent-opt", "api_key_env=HUD_RAY_TEST_UNSET_KEY", env=env,
              named=("api_key_env=HUD_RAY_TEST_UNSET_KEY",
                     "environment variable HUD_RAY_TEST_UNSET_KEY is not set"))


def test_agent_config_file_missing_or_not_a_mapping(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", *ENV_OPT,
              "--agent-config", str(tmp_path / "agent.yaml"),
              named=(f"--agent-config {tmp_path / 'agent.yaml'}: file not found",))
    (tmp_path / "agent.yaml").write_text("- model\n- base_url\n")
    run_error(tmp_path, str(DEMO_TASKS), "--agent", "rule", *ENV_OPT,
              "--agent-config", str(tmp_path / "agent.yaml"),
              named=("agent.yaml: expected a mapping of settings, got list",))


def test_agent_config_the_hud_agent_rejects_is_named(tmp_path):
    run_error(tmp_path, str(DEMO_TASKS), "--agent",
              "hud:hud.agents.openai_compatible:OpenAIChatAgent", *ENV_OPT,
              "--agent-opt", "max_steps=many", "--agent-opt", "api_key=x",
              "--agent-opt", "base_url=http://127.0.0.1:9/v1",
              named=("building the agent failed", "max_steps"))


def test_compose_runtime_is_refused_naming_row_and_provider(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl",
                       [good("a", runtime_config={"compose": {"services": {"app": {}}}})])
    run_error(tmp_path, str(tasks), "--agent", "rule", *ENV_OPT,
              named=(f"{tasks}:1", "provider 'local' cannot run a Compose project"))
