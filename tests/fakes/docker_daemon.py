"""The real Docker daemon for the docker provider's tests (nothing faked: dockerd itself).

- `require_daemon()`: skip, with the reason, only when no daemon answers (CI starts one
  with shared/tools/setup-docker.sh, so there the tests run).
- `demo_image()`: examples/demo built once per session on local/python-base:latest.
- `faulty_envs_image()`: the demo image plus tests/fakes/envs/ (env files that misbehave).
- `containers(labels)`: what the daemon holds with those labels, straight from the API.
- `kill_first_attempt`: an agent that SIGKILLs its own container on a rollout's first try.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from providers import imagedir
from providers.docker import images
from providers.docker.daemon import Daemon, DaemonUnreachable
from providers.docker.options import default_docker_host

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "local/python-base:latest"
DEMO_TAG = "hudray-demo:t"
TEST_TAG = "hudray-test-envs:t"


def daemon() -> Daemon:
    return Daemon(default_docker_host())


def require_daemon() -> Daemon:
    d = daemon()
    try:
        d.ping()
    except Exception as exc:
        pytest.skip(f"no Docker daemon reachable ({exc}); CI starts one with "
                    "shared/tools/setup-docker.sh")
    if not d.has_image(BASE_IMAGE):
        pytest.skip(f"{BASE_IMAGE} is missing: run shared/tools/setup-docker.sh")
    return d


def demo_image() -> str:
    images.build(require_daemon(), str(REPO / "examples" / "demo"), DEMO_TAG,
                 {"BASE_IMAGE": BASE_IMAGE}, lambda line: None)
    return DEMO_TAG


def faulty_envs_image(tmp_dir: Path) -> str:
    """The demo's Dockerfile.hud, with the misbehaving envs of tests/fakes/envs/ in /app."""
    d = require_daemon()
    context = tmp_dir / "test-envs"
    shutil.copytree(REPO / "examples" / "demo", context, dirs_exist_ok=True)
    for env_file in (REPO / "tests" / "fakes" / "envs").glob("*.py"):
        shutil.copy(env_file, context / env_file.name)
    (context / "Dockerfile.hud").write_text(
        (REPO / "examples" / "demo" / "Dockerfile.hud").read_text()
        .replace("COPY env.py /app/env.py", "COPY *.py /app/"))
    assert imagedir.dockerfile(context).name == "Dockerfile.hud"
    images.build(d, str(context), TEST_TAG, {"BASE_IMAGE": BASE_IMAGE}, lambda line: None)
    return TEST_TAG


def containers(labels: dict[str, str]) -> list[dict[str, Any]]:
    filters = urllib.parse.quote(json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]}))
    return daemon().json(f"/containers/json?all=1&filters={filters}")


def remove_all(labels: dict[str, str]) -> None:
    """A test's clean-up: nothing to remove where no daemon answers (the test was skipped)."""
    try:
        found = containers(labels)
    except DaemonUnreachable:
        return
    for c in found:
        daemon().request("DELETE", f"/containers/{c['Id']}?force=1")


async def kill_first_attempt(session: Any) -> str:
    """SIGKILL this rollout's container on the rollout's first attempt, then answer like the
    rule agent. The container is found by its rollout label (run with warm=0: a warm
    container's label says `(warm)`); a mark per run and rollout in /tmp, made before the
    kill, keeps later attempts alive (Ray workers see no test-set env vars)."""
    from hud_ray.agents import resolve_agent
    from providers import LABEL_ROLLOUT, LABEL_RUN

    for c in containers({LABEL_ROLLOUT: session.rollout_key}):
        if c.get("State") != "running":
            continue
        run_id = c["Labels"][LABEL_RUN]
        marks = Path(tempfile.gettempdir()) / f"hudray-kill-marks-{run_id}"
        marks.mkdir(exist_ok=True)
        mark = marks / session.rollout_key.replace("/", "_").replace("#", "_")
        if not mark.exists():
            mark.write_text(c["Id"])
            daemon().request("POST", f"/containers/{c['Id']}/kill?signal=KILL")
    return await resolve_agent("rule")(session)
