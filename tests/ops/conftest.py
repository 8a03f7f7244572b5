"""Helpers for the deployment tests: cluster.yaml checks and a real local Ray head.

`check_cluster_config` is Ray's own offline check (what `ray up` runs before it calls
the cloud) plus the rules hud-ray needs on top of it. `ray_head` starts a real
`ray start --head --block` on free ports with its own temp dir, for `ray job submit`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
KUBERAY_YAML = REPO / "deploy" / "kuberay.yaml"
VENV_BIN = Path(sys.executable).parent

# Environment variable names that hold provider credentials (read by the providers).
CREDENTIAL_NAME = re.compile(r"^[A-Z0-9_]*(SECRET|TOKEN|TOKEN_ID|API_KEY|PASSWORD)$")
# `NAME=literal` or `NAME: literal` inside a command; `$NAME`-style references are fine.
CREDENTIAL_ASSIGNMENT = re.compile(
    r"\b([A-Z0-9_]*(?:SECRET|TOKEN|TOKEN_ID|API_KEY|PASSWORD))\s*[=:]\s*['\"]?(?![$'\"\s])\S")


class ClusterConfigError(ValueError):
    """cluster.yaml would be rejected by `ray up`, or breaks a hud-ray rule."""


def check_cluster_config(config: dict[str, Any], ray_version: str) -> dict[str, Any]:
    """Validate like `ray up` does (no cloud calls), then hud-ray's rules; return the
    prepared config. Raises ClusterConfigError naming the offending key."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    if not isinstance(config.get("provider"), dict) or "type" not in config["provider"]:
        raise ClusterConfigError("provider.type is missing (e.g. `aws`)")
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "<top level>"
        raise ClusterConfigError(f"{where}: {exc.message}") from None
    except (ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise ClusterConfigError(f"ray rejects the config: {exc}") from None

    problems: list[str] = []
    head = prepared["head_node_type"]
    for name, node in prepared["available_node_types"].items():
        lo, hi = node.get("min_workers", 0), node.get("max_workers", 0)
        if lo > hi:  # Ray only checks the sum of min_workers against the global max
            problems.append(f"available_node_types.{name}: min_workers {lo} > max_workers {hi}")
        slots = node["resources"].get("sandbox_slots", 0)
        if name != head and slots <= 0:
            problems.append(f"available_node_types.{name}: resources.sandbox_slots must be > 0 "
                            "(hud-ray's worker actors ask for sandbox_slots; none could run there)")
    warm = [name for name, node in prepared["available_node_types"].items()
            if name != head and node["resources"].get("sandbox_slots", 0) > 0
            and node.get("min_workers", 0) >= 1]
    if not warm:
        # The scheduler asks for sandbox_slots only on a cluster that advertises them: with
        # no slot node up, workers would pile onto the head and nothing would scale.
        problems.append("no node type with sandbox_slots has min_workers >= 1 (the cluster "
                        "must advertise sandbox_slots from the start)")
    problems += _ray_pin_problems(prepared, ray_version)
    problems += _start_command_problems(prepared)
    problems += _literal_secret_problems(config)
    if problems:
        raise ClusterConfigError("; ".join(problems))
    return prepared


def _ray_pin_problems(config: dict[str, Any], ray_version: str) -> list[str]:
    commands = " ".join(config.get("setup_commands", []))
    pins = set(re.findall(r"ray\[default\]==([0-9][\w.]*)", commands))
    if not pins:
        return ["setup_commands: no `ray[default]==X.Y.Z` pin (Ray's AWS default installs a "
                "nightly wheel)"]
    if pins != {ray_version}:
        return [f"setup_commands pin ray {', '.join(sorted(pins))} but this checkout runs ray "
                f"{ray_version}: the cluster and the driver must run the same Ray"]
    return []


def _start_command_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    mounted = {str(k) for k in config.get("file_mounts", {})}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if "ray start" in c]
        if not starts:
            problems.append(f"{key}: no `ray start` command")
        for command in starts:
            before = command.split("ray start", 1)[0]
            if "ulimit -n 65536" not in before:
                problems.append(f"{key}: `ray start` without `ulimit -n 65536` before it "
                                "(256 sandboxes a node overrun 1024 file descriptors)")
            sourced = re.findall(r"(?:^|[;&|]\s*|\s)(?:\.|source)\s+(\S+)", before)
            if not any(path in mounted for path in sourced):
                problems.append(f"{key}: `ray start` does not source the credentials file "
                                f"from file_mounts ({', '.join(sorted(mounted)) or 'none'})")
    return problems


def _literal_secret_problems(config: Any, where: str = "") -> list[str]:
    """Credential values written into the file. Names only in the message, never values."""
    problems = []
    if isinstance(config, dict):
        for key, value in config.items():
            path = f"{where}.{key}" if where else str(key)
            if CREDENTIAL_NAME.match(str(key)) and isinstance(value, str) and value \
                    and not value.startswith("$"):
                problems.append(f"{path}: a literal credential value (pass it through the "
                                "environment / the secrets file)")
            else:
                problems += _literal_secret_problems(value, path)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            problems += _literal_secret_problems(value, f"{where}[{i}]")
    elif isinstance(config, str):
        for match in CREDENTIAL_ASSIGNMENT.finditer(config):
            problems.append(f"{where}: sets {match.group(1)} to a literal value (pass it "
                            "through the environment / the secrets file)")
    return problems


@pytest.fixture
def cluster_config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def ray_version() -> str:
    import ray

    return ray.__version__


# --- a real local Ray head ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class RayHead:
    proc: subprocess.Popen
    dashboard: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # for `ray job ...` clients: same auth mode, venv on PATH
    log: Path
    token: str | None = None  # with auth_mode="token"

    def get(self, path: str, timeout_s: float = 5.0) -> Any:
        request = urllib.request.Request(self.dashboard + path)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.loads(resp.read())

    def ray_cli(self, *args: str, timeout_s: float = 120.0,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "ray"), *args], env=self.env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # e.g. 401 under token auth: the server is up
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def ray_head(tmp: Path, *, auth_mode: str = "disabled", extra_env: dict[str, str] | None = None,
             resources: dict[str, int] | None = None,
             start_timeout_s: float = 120.0) -> Iterator[RayHead]:
    """`ray start --head --block` on free ports; stopped by PID (never `ray stop`).

    auth_mode="token" generates a token into `tmp` and points head and clients at it
    through RAY_AUTH_TOKEN_PATH (the user's ~/.ray/auth_token is never touched)."""
    dash = free_port()
    env = {**os.environ, **(extra_env or {}), "RAY_AUTH_MODE": auth_mode}
    token = None
    if auth_mode == "token":
        token = secrets.token_hex(16)
        token_path = tmp / "ray_auth_token"
        token_path.write_text(token)
        token_path.chmod(0o600)
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # the job's `hud-ray`
    env.pop("RAY_ADDRESS", None)
    # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep.
    temp_dir = Path(tempfile.mkdtemp(prefix="hud-ray-"))
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={free_port()}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
           "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           f"--dashboard-agent-listen-port={free_port()}",
           f"--metrics-export-port={free_port()}"]
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    log = tmp / "ray-head.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    head = RayHead(proc, f"http://127.0.0.1:{dash}", env, log, token)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"ray start exited with {proc.returncode}:\n"
                                     f"{head.log_tail()}")
            return _answers(head.dashboard + "/api/version")

        wait_until(up, start_timeout_s, "the Ray dashboard to answer")
        yield head
    finally:
        stop_head(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_head(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """Stop the head and every process it started, by PID (never `ray stop`, which is
    machine-wide). All get SIGTERM at once, then SIGKILL after `grace_s`: left to itself
    the `--block` process drains its children for up to 30 s, and some Ray processes
    still ignore SIGTERM after 15 s. The test is done with them; nothing needs saving."""
    try:
        family = [psutil.Process(proc.pid)]
        family += family[0].children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)  # reap our direct child
