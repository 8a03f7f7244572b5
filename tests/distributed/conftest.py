"""A real local Ray for the distributed tests (one per session, no dashboard)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, num_cpus=2, configure_logging=False,
             log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll `predicate` until truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def cli(*args: str, env: dict[str, str | None] | None = None, **kw) -> subprocess.Popen:
    """Start `hud-ray ...` as a separate driver process (its own Ray); an `env` value of
    None removes that variable."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    full_env.pop("RAY_ADDRESS", None)  # a driver of its own, unless env says otherwise
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.Popen(
        [sys.executable, "-m", "hud_ray.cli", *args], env=full_env, cwd=kw.pop("cwd", REPO),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw,
    )


def env_server_pids(state_dir: Path, zygotes: bool = True) -> set[int]:
    """PIDs of every live envkit server started by the local provider under `state_dir`
    (with the zygotes that fork them, unless `zygotes=False`: a worker kept for the next
    run keeps its zygote, hud_ray.pool)."""
    pids = set()
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = proc.info["cmdline"] or []
            if not zygotes and any(part.endswith("zygote.py") for part in cmd):
                continue
            if "hud_ray.envkit" in cmd and (proc.info["environ"] or {}).get(
                "HUD_RAY_STATE_DIR") == str(state_dir):
                pids.add(proc.pid)
        except (psutil.Error, TypeError):
            continue
    return pids


def kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
