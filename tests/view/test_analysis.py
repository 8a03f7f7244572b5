"""Triage signatures, the paired comparison's statistics, exports and the vendored JS."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from hud_ray.view import vendor
from hud_ray.view.analysis import compare, mcnemar_exact, signature
from hud_ray.view.runs import RunStore
from hud_ray.view.server import build_app
from hud_ray.view.synthetic import write_run


@pytest.mark.parametrize(("a", "b"), [
    ("connect to 10.0.3.4:8080 refused", "connect to 192.168.1.20:443 refused"),
    ("sandbox 3f2a9c1e-1b2c-4d5e-8f90-123456789abc is gone",
     "sandbox 00000000-aaaa-bbbb-cccc-dddddddddddd is gone"),
    ("no such file /tmp/work/123/out.txt", "no such file /var/run/x/y.log"),
    ("exit code 137 after 301.5 s", "exit code 1 after 2 s"),
    ("sandbox sb-a81f93c2d4e5 died", "sandbox sb-0123456789ab died"),
    ("KeyError: 'alpha'", "KeyError: 'beta'"),
])
def test_one_cause_one_signature(a: str, b: str) -> None:
    assert signature(a) == signature(b)


def test_different_causes_stay_apart() -> None:
    assert signature("connect refused") != signature("permission denied")
    assert signature(None) == "(no message)"
    assert signature("first line 12\nsecond line") == "first line <n>"


def test_mcnemar_exact() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    # 10 discordant pairs all one way: 2 * 0.5**10
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)


def _rows(outcomes: dict[str, list[float]]) -> list[dict]:
    return [{"slug": slug, "status": "ok", "reward": r}
            for slug, rewards in outcomes.items() for r in rewards]


def test_compare_paired_by_task() -> None:
    a = _rows({"t1": [1, 1], "t2": [0, 1], "t3": [0, 0], "only-a": [1, 1]})
    b = _rows({"t1": [1, 1], "t2": [0, 0], "t3": [1, 0], "only-b": [0, 0]})
    out = compare(a, b)
    assert (out["tasks"], out["wins"], out["losses"], out["ties"]) == (3, 1, 1, 1)
    assert (out["only_a"], out["only_b"]) == (1, 1)
    assert {f["slug"]: f["diff"] for f in out["flips"]} == {"t2": 0.5, "t3": -0.5}
    assert out["pass@1"]["diff"] == pytest.approx(0.0)
    assert out["pass@2"]["a"] == pytest.approx(2 / 3) and out["pass@2"]["b"] == pytest.approx(2 / 3)
    lo, hi = out["pass@1"]["ci95"]
    assert lo <= 0.0 <= hi


def test_failed_rollouts_count_as_misses() -> None:
    a = [{"slug": "t", "status": "timeout", "reward": None}]
    b = [{"slug": "t", "status": "ok", "reward": 1.0}]
    assert compare(a, b)["losses"] == 1


def test_export_equals_the_filter(tmp_path: Path) -> None:
    write_run(tmp_path / "r", 400, variants=("A", "B"), tasks=100)
    client = TestClient(build_app(RunStore([tmp_path])), base_url="http://127.0.0.1")
    params = {"status": "env_error,timeout,agent_error,infra_error"}
    count = client.get("/api/runs/r/rollouts", params=params).json()["last_row"]
    assert count > 0
    table = pq.read_table(io.BytesIO(client.get("/api/runs/r/export", params={
        **params, "format": "parquet"}).content))
    assert table.num_rows == count and set(table.column("status").to_pylist()) <= set(
        params["status"].split(","))
    lines = client.get("/api/runs/r/export", params={**params, "format": "jsonl"}).text
    assert len(lines.splitlines()) == count
    steps = pq.read_table(io.BytesIO(client.get("/api/runs/r/export", params={
        **params, "what": "steps"}).content))
    assert set(steps.column("rollout_key").to_pylist()) <= set(table.column("rollout_key").to_pylist())
    assert json.loads(lines.splitlines()[0])["status"] in params["status"]


def test_vendored_js_matches_its_pins() -> None:
    assert vendor.check() == []


def test_overview_throughput_is_binned(tmp_path: Path) -> None:
    from hud_ray.view.queries import overview
    from hud_ray.view.runs import RunData

    write_run(tmp_path / "r", 3000)
    table, _ = RunData("r", tmp_path / "r").table()
    tp = overview(table)["extra"]["throughput"]
    assert 1 < len(tp["t"]) <= 61  # about 60 buckets, whatever the run's length
    assert round(sum(tp["rows_per_s"]) * tp["bucket_s"]) == 3000
