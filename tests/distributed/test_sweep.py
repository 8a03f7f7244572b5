"""Sweeps: a grid into one run directory with a `variant` column, resumable."""

from __future__ import annotations

from collections import Counter

import pytest

from hud_ray.report import build_report, format_report
from hud_ray.results import read_manifest, read_results
from hud_ray.sweep import SweepError, load_sweep, run_sweep, stream_sweep

from .conftest import REPO

DEMO = REPO / "examples" / "demo"

SWEEP = """
name: {name}
out: {out}
concurrency: 8
timeout_s: 60
tasksets: [{{name: demo, path: tasks.jsonl}}]
agents:
  - {{name: rule, spec: rule}}
  - name: rule-no-sort
    spec: "hud_ray.agents.rule:make_rule_agent"
    params: {{skip: [sort]}}
providers: [{{provider: local}}]
repeats: [1, 2]
"""


def _sweep(tmp_path, name: str, rows: int = 12):
    (tmp_path / "tasks.jsonl").write_text(
        "\n".join((DEMO / "tasks.jsonl").read_text().splitlines()[:rows]) + "\n")
    (tmp_path / "env.py").write_text((DEMO / "env.py").read_text())
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(name=name, out=tmp_path / "runs"))
    return path


def test_two_by_two_sweep_one_run_with_variants(ray_local, tmp_path):
    table = run_sweep(_sweep(tmp_path, "grid"), progress=False)
    rows = table.to_pylist()
    per_variant = Counter(r["variant"] for r in rows)
    assert per_variant == {"rule|r1": 12, "rule|r2": 24, "rule-no-sort|r1": 12,
                           "rule-no-sort|r2": 24}
    assert len({r["rollout_key"] for r in rows}) == len(rows) == 72
    for row in rows:
        assert row["status"] == "ok"
        solved = row["template_id"] not in ("riddle",) and not (
            row["variant"].startswith("rule-no-sort") and row["template_id"] == "sort")
        assert row["reward"] == (1.0 if solved else 0.0), row
        assert row["agent"] == row["variant"].split("|")[0]
    report = build_report(table)
    by_name = {v["variant"]: v for v in report["variants"]}
    assert by_name["rule|r2"]["mean_reward"] > by_name["rule-no-sort|r2"]["mean_reward"]
    assert "pass@2" in by_name["rule|r2"]
    assert "variants side by side" in format_report(report)
    assert read_manifest(tmp_path / "runs" / "grid")["state"] == "finished"


def test_sweep_interrupted_then_resumed_has_no_duplicates(ray_local, tmp_path):
    path = _sweep(tmp_path, "again")
    stream = stream_sweep(path, progress=False)
    next(stream)
    stream.close()  # as Ctrl-C would: in-flight sandboxes torn down, written rows kept
    partial = read_results(tmp_path / "runs" / "again").num_rows
    assert 0 < partial < 72
    table = run_sweep(path, resume=True, progress=False)
    keys = table.column("rollout_key").to_pylist()
    assert len(keys) == 72 == len(set(keys))


def test_bad_sweep_files_name_the_field(tmp_path):
    path = _sweep(tmp_path, "bad")
    path.write_text(path.read_text().replace("repeats: [1, 2]", "repeats: [0]"))
    with pytest.raises(SweepError, match=r"bad.yaml: field 'repeats'"):
        load_sweep(path)
    path.write_text(path.read_text().replace("spec: rule}", "spek: rule}"))
    with pytest.raises(SweepError, match=r"field 'agents.0.spec'"):
        load_sweep(path)
    with pytest.raises(SweepError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")


def test_sweep_with_a_bad_row_stops_before_anything_runs(tmp_path):
    path = _sweep(tmp_path, "badrow")
    with (tmp_path / "tasks.jsonl").open("a") as fh:
        fh.write('{"env": "demo", "args": {}}\n')
    with pytest.raises(Exception, match=r"tasks.jsonl:13: field 'id'"):
        next(stream_sweep(path, progress=False))
    assert not (tmp_path / "runs" / "badrow").exists()
