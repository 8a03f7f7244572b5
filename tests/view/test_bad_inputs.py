"""`hud-ray view` on bad input: one clear message each, the page keeps working, and
nothing is ever written into a run."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hud_ray.view.runs import RunStore
from hud_ray.view.server import build_app
from hud_ray.view.synthetic import write_run

from .conftest import REPO, Viewer


def view_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hud_ray.cli", "view", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def client_for(root: Path) -> TestClient:
    return TestClient(build_app(RunStore([root])), base_url="http://127.0.0.1")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def test_missing_directory_is_one_error(tmp_path: Path) -> None:
    done = view_cli(str(tmp_path / "nope"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"hud-ray: error: {tmp_path / 'nope'}: no such directory"


def test_export_of_a_directory_without_runs(tmp_path: Path) -> None:
    done = view_cli(str(tmp_path), "--export", str(tmp_path / "out"))
    assert done.returncode == 2 and "no run under" in done.stderr
    assert not (tmp_path / "out").exists()


def test_port_in_use(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        done = view_cli(str(tmp_path), "--port", str(taken.getsockname()[1]))
    finally:
        taken.close()
    assert done.returncode == 2
    assert "is in use; pass --port N" in done.stderr


def test_empty_directory_serves_and_says_so(tmp_path: Path) -> None:
    server = Viewer(str(tmp_path), "--port", "0")
    try:
        import urllib.request

        runs = json.load(urllib.request.urlopen(f"{server.base}/api/runs", timeout=10))
        assert runs["runs"] == []
        write_run(tmp_path / "later", 20)  # a run that starts after the viewer shows up
        runs = json.load(urllib.request.urlopen(f"{server.base}/api/runs", timeout=10))
        assert [r["run_id"] for r in runs["runs"]] == ["later"]
    finally:
        server.stop()
    assert "no run under" in server.proc.stderr.read()


def test_corrupt_and_half_written_parts(tmp_path: Path) -> None:
    write_run(tmp_path / "r", 100, flush_rows=40)
    parts = tmp_path / "r" / "rollouts"
    (parts / "part-00099-deadbeef.parquet").write_bytes(b"PAR1 not really")  # corrupt
    (parts / ".part-00100-deadbeef.parquet.tmp").write_bytes(b"PAR1")  # being written
    client = client_for(tmp_path)
    overview = client.get("/api/runs/r/overview").json()
    assert overview["rows"] == 100
    assert overview["run"]["unreadable_parts"] == ["part-00099-deadbeef.parquet"]
    assert client.get("/api/runs/r/rollouts", params={"size": 5}).json()["last_row"] == 100


def test_run_deleted_while_open(tmp_path: Path) -> None:
    write_run(tmp_path / "r", 30)
    client = client_for(tmp_path)
    assert client.get("/api/runs/r/overview").status_code == 200
    shutil.rmtree(tmp_path / "r")
    gone = client.get("/api/runs/r/overview")
    assert gone.status_code == 404 and "was deleted" in gone.json()["error"]
    assert client.get("/api/runs").json()["runs"] == []  # the list goes on working


def test_bad_filter_and_sort_are_named(tmp_path: Path) -> None:
    write_run(tmp_path / "r", 10)
    client = client_for(tmp_path)
    bad = client.get("/api/runs/r/rollouts", params={"reward_min": "high"})
    assert bad.status_code == 400 and bad.json()["error"] == (
        "filter reward_min='high': expected a number")
    bad = client.get("/api/runs/r/rollouts", params={"sort": "reward; DROP"})
    assert bad.status_code == 400 and "no such column" in bad.json()["error"]
    bad = client.get("/api/runs/r/export", params={"format": "xlsx"})
    assert bad.status_code == 400 and "expected parquet or jsonl" in bad.json()["error"]
    assert client.get("/api/runs/nope/overview").status_code == 404


def test_crashed_run_is_called_crashed(tmp_path: Path) -> None:
    writer = write_run(tmp_path / "r", 10, close=False)
    client = client_for(tmp_path)
    assert client.get("/api/runs").json()["runs"][0]["state"] == "running"
    writer.lock.release()  # as a dead writer's kernel would; the manifest still says running
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    lock = tmp_path / "r" / "writer.lock"
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "pid": int(dead),
                                "state": "held"}))
    assert client.get("/api/runs").json()["runs"][0]["state"] == "crashed"


def test_nothing_is_written_into_a_run(tmp_path: Path) -> None:
    write_run(tmp_path / "r", 200, variants=("A", "B"), tasks=50)
    before = snapshot(tmp_path)
    client = client_for(tmp_path)
    for path in ("/api/runs", "/api/runs/r/overview", "/api/runs/r/facets",
                 "/api/runs/r/rollouts?status=ok", "/api/runs/r/triage", "/api/runs/r/dist",
                 "/api/runs/r/export?format=parquet", "/api/runs/r/export?what=steps",
                 "/api/compare?a=r&a_variant=A&b=r&b_variant=B"):
        assert client.get(path).status_code == 200, path
    client.post("/api/runs/r/sql", json={"sql": "SELECT count(*) FROM steps"})
    assert snapshot(tmp_path) == before


def test_loopback_refuses_a_foreign_host_header(tmp_path: Path) -> None:
    write_run(tmp_path / "r", 5)
    client = TestClient(build_app(RunStore([tmp_path])), base_url="http://evil.example")
    assert client.get("/api/runs").status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_names_are_served(tmp_path: Path, host: str) -> None:
    client = TestClient(build_app(RunStore([tmp_path])), base_url=f"http://{host}:8765")
    assert client.get("/api/runs").status_code == 200
