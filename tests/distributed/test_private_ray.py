"""Issue 16 item 4: the private Ray that `hud-ray run` starts listens on loopback only and
keeps Ray's token authentication (on by default for a new local cluster since Ray 2.52)."""

from __future__ import annotations

import ipaddress
import time

import psutil
import pytest

from .conftest import REPO, cli, kill_tree

DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"


def _listening(root: psutil.Process) -> dict[tuple[str, str, int], int]:
    """(process name, ip, port) → pid for every listening TCP socket under `root`."""
    found = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found[(name, conn.laddr.ip, conn.laddr.port)] = proc.pid
        except psutil.Error:
            continue
    return found


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return (mapped or addr).is_loopback


def _gcs_auth_mode(root: psutil.Process) -> str | None:
    for proc in root.children(recursive=True):
        try:
            if proc.name() == "gcs_server":
                return proc.environ().get("RAY_AUTH_MODE")
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
def test_private_ray_listens_on_loopback_only_with_token_auth(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(DEMO_TASKS.read_text().splitlines(keepends=True)[:24]))
    home = tmp_path / "home"  # Ray writes its token to ~/.ray/auth_token: not the real home
    home.mkdir()
    driver = cli("run", str(tasks), "--agent", "tests/fakes/agents.py:slow_rule_agent",
                 "--provider-opt", f"env_file={REPO / 'examples/demo/env.py'}",
                 "--concurrency", "2", "--workers", "1", "--out", str(tmp_path / "runs"),
                 "--run-id", "ports", "--no-progress",
                 env={"RAY_AUTH_MODE": None, "HOME": str(home)})
    sockets: dict[tuple[str, str, int], int] = {}
    auth_mode = None
    try:
        root = psutil.Process(driver.pid)
        deadline = time.monotonic() + 120
        # Sample while the run is going: from the first rollout worker until the driver ends.
        while driver.poll() is None and time.monotonic() < deadline:
            now = _listening(root)
            if any(name.startswith("ray::RolloutWorker") for name, _, _ in now):
                sockets.update(now)
                auth_mode = auth_mode or _gcs_auth_mode(root)
            time.sleep(0.2)
        _, stderr = driver.communicate(timeout=120)
    finally:
        kill_tree(driver)
    assert driver.returncode == 0, stderr[-3000:]
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and any(
        n.startswith("ray::RolloutWorker") for n in names), f"run not sampled: {sorted(names)}"
    exposed = sorted(key for key in sockets if not _is_loopback(key[1]))
    assert not exposed, f"listening on a non-loopback address: {exposed}"
    assert auth_mode == "token", f"gcs_server runs with RAY_AUTH_MODE={auth_mode!r}"
    assert (home / ".ray" / "auth_token").is_file()
