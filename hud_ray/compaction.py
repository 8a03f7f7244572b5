"""Compaction: a writer's many small parts merged into few large ones when it closes, so
a run of 100,000 rollouts ends as a handful of files, not hundreds — while each part
stays durable the moment it is written (the run streams as before).

Crash-safe at every step, with a journal (`compaction.json` in the run directory):

1. the journal names the merged part and the parts it replaces (written atomically);
2. the merged steps part is written (invisible: a steps part counts only once the
   rollouts part of its name exists);
3. the merged rollouts part is written (temp file + rename). From here on readers use it
   and skip the parts the journal names, so no row is ever seen twice;
4. the replaced parts are deleted (rollouts part first), then the journal.

A crash before 3 leaves the originals (the next writer of the run removes the merged
steps part); a crash after 3 leaves the merged part (the next writer deletes the
originals still there). Nothing is lost, nothing counted twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

JOURNAL = "compaction.json"
MAX_ROWS_PER_PART = 1_000_000  # a merged part holds at most this many rollouts


def plan(parts: Sequence[tuple[str, int]], max_rows: int = MAX_ROWS_PER_PART) -> list[list[str]]:
    """Consecutive (name, rows) parts grouped into runs of at most `max_rows` rows; only
    groups of two or more parts are worth merging."""
    groups: list[list[str]] = [[]]
    rows = 0
    for name, n in parts:
        if groups[-1] and rows + n > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(name)
        rows += n
    return [g for g in groups if len(g) > 1]


def compact(run_dir: Path, parts_dir: str, steps_dir: str, names: list[str], into: str,
            schema: pa.Schema, step_schema: pa.Schema) -> None:
    """Merge the parts `names` (in order) into the part `into`; see the module doc."""
    journal = run_dir / JOURNAL
    _write_text(journal, json.dumps({"into": into, "parts": names}))
    steps = [run_dir / steps_dir / n for n in names if (run_dir / steps_dir / n).exists()]
    if steps:
        _merge(steps, run_dir / steps_dir / into, step_schema)
    _merge([run_dir / parts_dir / n for n in names], run_dir / parts_dir / into, schema)
    _drop_replaced(run_dir, parts_dir, steps_dir, names)
    journal.unlink()


def finish(run_dir: Path, parts_dir: str, steps_dir: str) -> str | None:
    """Complete (merged part in place) or undo (not yet) a compaction a crash cut short.
    Returns what was done, or None when there was nothing to do."""
    journal = _read_journal(run_dir)
    if journal is None:
        return None
    into, names = journal["into"], journal["parts"]
    if (run_dir / parts_dir / into).exists():
        _drop_replaced(run_dir, parts_dir, steps_dir, names)
        done = f"completed: {len(names)} parts merged into {into}"
    else:
        for sub in (steps_dir, parts_dir):
            for leftover in (run_dir / sub / into, run_dir / sub / f".{into}.tmp"):
                leftover.unlink(missing_ok=True)
        done = f"undone: {len(names)} parts kept, {into} removed"
    (run_dir / JOURNAL).unlink()
    return done


def replaced(run_dir: Path, parts_dir: str) -> set[str]:
    """Parts a compaction in progress has already replaced: readers skip them."""
    journal = _read_journal(run_dir)
    if journal is None or not (run_dir / parts_dir / journal["into"]).exists():
        return set()
    return set(journal["parts"])


def _merge(sources: list[Path], target: Path, schema: pa.Schema) -> None:
    """One part at a time into one file (memory: one part), then renamed into place."""
    tmp = target.with_name(f".{target.name}.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for source in sources:
            writer.write_table(pq.read_table(source, schema=schema))
    os.replace(tmp, target)


def _drop_replaced(run_dir: Path, parts_dir: str, steps_dir: str, names: list[str]) -> None:
    for name in names:
        (run_dir / parts_dir / name).unlink(missing_ok=True)  # its steps stop counting
        (run_dir / steps_dir / name).unlink(missing_ok=True)


def _read_journal(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / JOURNAL).read_text())
    except FileNotFoundError:
        return None


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
