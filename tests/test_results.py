"""ResultWriter's flush policy: the first rows reach disk at once, later ones by count or
timer; every row read back."""

from __future__ import annotations

from hud_ray.results import PARTS_DIR, ResultWriter, read_results
from hud_ray.schema import RolloutResult, Status


def _row(i: int) -> dict:
    return RolloutResult(run_id="r", rollout_key=f"t-{i}#0", slug=f"t-{i}", template_id="t",
                         group_id=f"g{i}", status=Status.OK, reward=1.0).to_row()


def _parts(writer: ResultWriter) -> list[str]:
    """Part names without the writer's incarnation."""
    names = sorted(p.name for p in (writer.run_dir / PARTS_DIR).glob("part-*.parquet"))
    return [n.replace(f"-{writer.incarnation}", "") for n in names]


def test_first_rows_flush_at_once_then_by_timer(tmp_path):
    writer = ResultWriter(tmp_path / "r", config={}, flush_rows=100, flush_s=3600)
    assert writer.maybe_flush() is None  # nothing buffered: nothing written
    writer.add(_row(0))
    writer.add(_row(1))
    first = writer.maybe_flush()
    assert first is not None and first.num_rows == 2
    assert _parts(writer) == ["part-00000.parquet"]
    writer.add(_row(2))
    assert writer.maybe_flush() is None, "within flush_s of the last part: keep buffering"
    assert _parts(writer) == ["part-00000.parquet"]
    writer.close()
    assert sorted(read_results(writer.run_dir).column("rollout_key").to_pylist()) == [
        "t-0#0", "t-1#0", "t-2#0"]


def test_flush_by_row_count(tmp_path):
    writer = ResultWriter(tmp_path / "r", config={}, flush_rows=3, flush_s=3600)
    assert [writer.add(_row(i)) is not None for i in range(3)] == [False, False, True]
    assert _parts(writer) == ["part-00000.parquet"]
    writer.close()
    assert read_results(writer.run_dir).num_rows == 3


def test_readers_keep_the_latest_row_of_a_key_written_twice(tmp_path):
    """A second line of defence behind the writer lock: a key in two parts (two writers
    once shared the run) is read once, the latest row wins, and the report says so."""
    from hud_ray.report import report_run
    from hud_ray.results import duplicate_rows

    first = ResultWriter(tmp_path / "r", config={}, flush_rows=100)
    first.add(_row(0))
    first.add({**_row(1), "status": "infra_error", "reward": None})
    first.close()
    second = ResultWriter(tmp_path / "r", config={}, resume=True, flush_rows=100)
    second.add(_row(1))  # the same key again, later: this one counts
    second.close()
    table = read_results(tmp_path / "r")
    assert sorted(table.column("rollout_key").to_pylist()) == ["t-0#0", "t-1#0"]
    assert {r["rollout_key"]: r["status"] for r in table.to_pylist()}["t-1#0"] == "ok"
    assert duplicate_rows(tmp_path / "r") == (1, 1)
    text = report_run(tmp_path / "r")
    assert "rollouts: 2 " in text and "1 duplicate row(s) for 1 rollout key(s)" in text
    assert len({p.name for p in (tmp_path / "r" / PARTS_DIR).iterdir()}) == 2  # none overwritten


def test_a_truncated_part_is_skipped_by_readers_and_quarantined_by_a_resume(tmp_path, caplog):
    from hud_ray.report import report_run
    from hud_ray.results import QUARANTINE_DIR, done_keys

    writer = ResultWriter(tmp_path / "r", config={}, flush_rows=2)
    for i in range(4):
        writer.add(_row(i))
    writer.lock.release()  # killed before close: its parts stay as written (not compacted)
    first = sorted((tmp_path / "r" / PARTS_DIR).glob("part-*.parquet"))[0]
    first.write_bytes(first.read_bytes()[:100])
    assert "rollouts: 2 " in report_run(tmp_path / "r")  # the rest is read
    assert any(first.name in r.getMessage() for r in caplog.records)
    resumed = ResultWriter(tmp_path / "r", config={}, resume=True)
    assert set(done_keys(tmp_path / "r")) == {"t-2#0", "t-3#0"}  # the lost ones run again
    assert resumed.counts == {"ok": 2}  # counted from disk, not the old manifest
    assert (tmp_path / "r" / QUARANTINE_DIR / first.name).is_file()
    resumed.close()
