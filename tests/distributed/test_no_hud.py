"""The core runs where hud is not importable: hud is the `[hud]` extra, never needed by
hud_ray itself. A `sitecustomize` on PYTHONPATH makes `import hud` fail in the driver AND
in every Ray worker (they inherit the driver's environment), and the user's path is run:
the CLI with the demo env on Ray workers. What needs hud says so, naming the extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
HUD_ENVS = REPO / "tests" / "fakes" / "hud_envs"

NO_HUD_AGENT = '''
from hud_ray.agents.rule import rule_agent


async def agent(session):
    try:
        import hud  # noqa: F401
    except ImportError:
        return await rule_agent(session)
    raise RuntimeError("hud is importable in this Ray worker")
'''


@pytest.fixture
def no_hud_env(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "block_hud"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['hud'] = None  # `import hud` fails as if not installed\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_ADDRESS="local",
               PYTHONPATH=os.pathsep.join([str(blocker), str(REPO)]))
    done = subprocess.run([sys.executable, "-c", "import hud"], env=env, capture_output=True,
                          text=True)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr  # the blocker works
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hud_ray.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_demo_runs_on_ray_workers_without_hud(no_hud_env, tmp_path):
    agent = tmp_path / "no_hud_agent.py"
    agent.write_text(NO_HUD_AGENT)
    done = cli(no_hud_env, "run", str(DEMO / "tasks.jsonl"), "--agent", f"{agent}:agent",
               "--concurrency", "8", "--out", str(tmp_path / "runs"), "--run-id", "r",
               "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pq.read_table(tmp_path / "runs" / "r" / "rollouts").to_pylist()
    assert len(rows) == 240 and all(r["status"] == "ok" for r in rows), rows[0]
    # the rule agent solves every template but `riddle`
    assert {r["template_id"] for r in rows if r["reward"] == 0.0} == {"riddle"}


@pytest.mark.parametrize("args, named", [
    (["run", str(DEMO / "tasks.jsonl"), "--agent", "hud:hud.agents.openai_compatible:OpenAIChatAgent"],
     "needs hud: pip install 'hud-ray[hud]'"),
    (["run", str(HUD_ENVS / "tools" / "tasks.py"), "--agent", "nop"],
     "hud is not importable here"),
    (["run", str(DEMO / "tasks.jsonl"), "--agent", "nop", "--provider-opt",
      f"env_file={HUD_ENVS / 'tools' / 'env.py'}"],
     "is a hud env (it imports hud) and is served by hud's own server, but hud is not "
     "installed here: pip install 'hud-ray[hud]'"),
], ids=["hud-agent", "tasks-py", "hud-env-file"])
def test_what_needs_hud_names_the_extra(no_hud_env, tmp_path, args, named):
    done = cli(no_hud_env, *args, "--out", str(tmp_path / "runs"), "--no-progress")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("hud-ray: error: ") and named in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()
