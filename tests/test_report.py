"""`hud-ray report`: one population per line — n, graded, failed, the mean with failures
as 0 and an honest interval, the graded-only mean beside it, pass@k (issue 20 item 7)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hud_ray.report import build_report, interval, wilson
from hud_ray.results import ResultWriter
from hud_ray.schema import RolloutResult, Status


def _row(slug: str, repeat: int, status: Status, reward: float | None,
         template: str = "t", variant: str | None = None) -> dict:
    return RolloutResult(run_id="r", rollout_key=f"{slug}#{repeat}", slug=slug,
                         template_id=template, group_id=slug, repeat=repeat, variant=variant,
                         status=status, reward=reward).to_row()


def _write(tmp_path, rows: list[dict]):
    writer = ResultWriter(tmp_path / "run", config={})
    for row in rows:
        writer.add(row)
    writer.close("finished")
    return tmp_path / "run"


def test_two_of_four_timed_out_is_reported_over_one_population(tmp_path):
    # The case: 2 graded at 1.0, 2 timed out. Before: "n=4 mean 1.000 ± 0.000".
    rows = [_row("a", 0, Status.OK, 1.0), _row("a", 1, Status.OK, 1.0),
            _row("a", 2, Status.TIMEOUT, None), _row("a", 3, Status.TIMEOUT, None)]
    run_dir = _write(tmp_path, rows)
    done = subprocess.run([sys.executable, "-m", "hud_ray.cli", "report", str(run_dir), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    t = json.loads(done.stdout)["templates"][0]
    assert (t["rollouts"], t["graded"], t["failed"]) == (4, 2, 2)
    assert t["mean_reward"] == 0.5 and t["graded_mean_reward"] == 1.0
    assert t["ci_method"] == "wilson"
    lo, hi = t["ci95"]
    assert lo == pytest.approx(0.150, abs=1e-3) and hi == pytest.approx(0.850, abs=1e-3)
    assert t["pass@1"] == 0.5 and t["pass@4"] == 1.0
    text = subprocess.run([sys.executable, "-m", "hud_ray.cli", "report", str(run_dir)],
                          capture_output=True, text=True, timeout=60).stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("t "))
    assert line.split() == ["t", "4", "2", "2", "0.500", "[0.150,", "0.850]", "1.000", "0.500",
                            "1.000"], line
    assert "±" not in text and "failed rollouts count as 0" in text


def test_two_equal_values_never_give_a_zero_width_interval():
    ci, method = interval([1.0, 1.0])
    assert method == "wilson" and ci[1] == 1.0 and ci[0] < 0.35  # [0.342, 1.0]
    ci, method = interval([0.5, 0.5])  # partial credit: Wilson's bound, not ±0
    assert method == "wilson-bound" and ci[1] - ci[0] > 0.5
    ci, method = interval([3.0, 3.0])  # unbounded rewards, n < 10: no interval at all
    assert ci is None and method == "n<10"


def test_bootstrap_for_unbounded_rewards_is_seeded_and_covers_the_mean():
    values = [float(v) for v in range(-5, 15)]
    first, method = interval(values)
    assert method == "bootstrap" and first == interval(values)[0]
    assert first[0] < sum(values) / len(values) < first[1]


def test_wilson_matches_the_textbook_value():
    lo, hi = wilson(0.7, 10)  # 7 of 10
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)


def test_variants_and_the_overall_line_use_the_same_population():
    rows = [_row("a", 0, Status.OK, 1.0, variant="x"), _row("a", 1, Status.INFRA_ERROR, None,
                                                            variant="x"),
            _row("b", 0, Status.OK, 0.0, template="u", variant="y"),
            _row("b", 1, Status.OK, 1.0, template="u", variant="y")]
    import pyarrow as pa

    from hud_ray.schema import arrow_schema

    report = build_report(pa.Table.from_pylist(rows, schema=arrow_schema()))
    by_variant = {v["variant"]: v for v in report["variants"]}
    assert by_variant["x"]["mean_reward"] == 0.5 and by_variant["x"]["failed"] == 1
    assert by_variant["x"]["graded_mean_reward"] == 1.0
    assert by_variant["y"]["mean_reward"] == 0.5 and by_variant["y"]["failed"] == 0
    overall = report["overall"]
    assert (overall["rollouts"], overall["graded"], overall["failed"]) == (4, 3, 1)
    assert overall["mean_reward"] == 0.5
