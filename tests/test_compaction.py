"""Compaction at a writer's close: many parts become one, and a crash at any step of it
loses no row and shows none twice (hud_ray.compaction)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hud_ray import compaction
from hud_ray.results import (
    PARTS_DIR,
    STEPS_DIR,
    ResultWriter,
    duplicate_rows,
    read_results,
    read_steps,
)
from hud_ray.schema import RolloutResult, Status

ROWS, STEPS_PER_ROW = 12, 2


class Crash(BaseException):
    """Stands for a kill -9: nothing after it runs, nothing catches it."""


def _row(i: int) -> dict:
    steps = [{"run_id": "r", "rollout_key": f"t-{i}#0", "index": k, "kind": "text",
              "content": f"{i}.{k}"} for k in range(STEPS_PER_ROW)]
    return RolloutResult(run_id="r", rollout_key=f"t-{i}#0", slug=f"t-{i}", template_id="t",
                         group_id=f"g{i}", status=Status.OK, reward=1.0,
                         step_rows=steps).to_row()


def _files(run_dir: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (run_dir / sub).glob("part-*.parquet"))


def _written(run_dir: Path) -> ResultWriter:
    """A writer that flushed ROWS rows as ROWS / 2 parts, not yet closed."""
    writer = ResultWriter(run_dir, config={}, flush_rows=2, flush_s=3600)
    for i in range(ROWS):
        writer.add(_row(i))
    assert len(_files(run_dir, PARTS_DIR)) == ROWS // 2
    return writer


def _assert_whole(run_dir: Path) -> None:
    keys = read_results(run_dir).column("rollout_key").to_pylist()
    assert sorted(keys) == sorted(f"t-{i}#0" for i in range(ROWS))
    assert duplicate_rows(run_dir) == (0, 0)
    steps = read_steps(run_dir)
    assert steps.num_rows == ROWS * STEPS_PER_ROW, "every step once"


def test_close_merges_the_parts_into_one(tmp_path):
    writer = _written(tmp_path / "r")
    writer.close()
    run_dir = tmp_path / "r"
    assert len(_files(run_dir, PARTS_DIR)) == 1
    assert len(_files(run_dir, STEPS_DIR)) == 1
    assert _files(run_dir, PARTS_DIR) == _files(run_dir, STEPS_DIR)
    assert not (run_dir / compaction.JOURNAL).exists()
    _assert_whole(run_dir)
    # A resume of the compacted run skips every rollout it holds.
    again = ResultWriter(run_dir, config={}, resume=True)
    assert sum(again.counts.values()) == ROWS
    again.close()


def test_plan_groups_consecutive_parts_up_to_max_rows():
    parts = [("a", 4), ("b", 4), ("c", 4), ("d", 9), ("e", 1)]
    assert compaction.plan(parts, max_rows=8) == [["a", "b"]]
    assert compaction.plan(parts, max_rows=10) == [["a", "b"], ["d", "e"]]
    assert compaction.plan([("a", 1)]) == []


def _mutations() -> int:
    """How many file renames and deletions one compaction of `_written` makes."""
    return 3 + 2 * (ROWS // 2) + 1  # journal, steps, rollouts; two per part; journal


@pytest.mark.parametrize("crash_at", range(_mutations()))
def test_a_crash_at_any_step_loses_nothing(tmp_path, monkeypatch, crash_at):
    run_dir = tmp_path / "r"
    writer = _written(run_dir)
    count = [0]
    real_replace, real_unlink = os.replace, Path.unlink

    def tick() -> None:
        if count[0] == crash_at:
            raise Crash
        count[0] += 1

    def replace(src, dst):
        tick()
        return real_replace(src, dst)

    def unlink(self, missing_ok=False):
        tick()
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Crash):
        writer.compact()
    monkeypatch.undo()
    writer.lock.release()  # the crashed driver's lock dies with it
    # Readers of the crashed run: every row and every step, each once.
    _assert_whole(run_dir)
    # The next writer of the run completes or undoes the compaction, then all is whole.
    nxt = ResultWriter(run_dir, config={}, resume=True)
    assert not (run_dir / compaction.JOURNAL).exists()
    assert len(_files(run_dir, PARTS_DIR)) in (1, ROWS // 2)
    assert sum(nxt.counts.values()) == ROWS
    nxt.close()
    _assert_whole(run_dir)
    assert not list((run_dir / PARTS_DIR).glob(".*.tmp")), "no temp file left behind"
