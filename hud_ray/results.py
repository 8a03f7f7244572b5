"""Results on disk: `runs/<run_id>/manifest.json` + `rollouts/part-NNNNN-<incarnation>.parquet`.

Rows are buffered and written as a new part every N rows or T seconds, atomically
(temp file + rename), so a crash loses at most the unflushed buffer and a reader never
sees half a file. One driver writes a run directory at a time (`runlock.RunLock`), and
part names carry the writer's incarnation, so no part is ever overwritten. Readers still
tolerate a rollout_key written twice (keeping the latest row, and saying so): a second
line of defence. Resume is an anti-join on `rollout_key`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hud_ray import compaction
from hud_ray.incarnation import driver_identity, new_incarnation
from hud_ray.redact import Scrubber
from hud_ray.runlock import RunLock, RunLockedError
from hud_ray.schema import arrow_schema, utcnow
from hud_ray.trajectory import step_schema

PARTS_DIR = "rollouts"
STEPS_DIR = "steps"
MANIFEST = "manifest.json"
QUARANTINE_DIR = "quarantine"  # unreadable parts, moved aside by a resume
log = logging.getLogger("hud_ray.results")


class RunDirError(ValueError):
    """A run directory that cannot be used (not writable, config mismatch on resume)."""


def parts(run_dir: str | Path) -> list[Path]:
    """Part files in the order they were written (`part-NNNNN[-incarnation].parquet`),
    without those a compaction in progress has already merged into another."""
    skip = compaction.replaced(Path(run_dir), PARTS_DIR)
    return sorted((p for p in (Path(run_dir) / PARTS_DIR).glob("part-*.parquet")
                   if p.name not in skip), key=_part_order)


def _part_order(path: Path) -> tuple[int, str]:
    return _part_seq(path), path.name


def _part_seq(path: Path) -> int:
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return -1


def read_results(run_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every row of a run (also one still in progress) as one Arrow table: one row per
    rollout_key — where a key was written twice, the latest row (see `duplicate_rows`)."""
    files = parts(run_dir)
    schema = arrow_schema()
    if not files:
        table = schema.empty_table()
        return table.select(columns) if columns else table
    wanted = None if columns is None else list(dict.fromkeys(
        [*columns, "rollout_key", "finished_at"]))
    tables = [t for f in files if (t := _read_part(f, wanted)) is not None]
    if not tables:
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    table = latest_per_key(pa.concat_tables(tables, promote_options="permissive"))
    return table.select(columns) if columns else table


def read_steps(run_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every step of a run (one row per step; join on `rollout_key`)."""
    from hud_ray.trajectory import step_schema

    # A steps part counts once its rollouts part exists (written right after it): steps
    # of rows a crash lost between the two are rerun, and must not show up twice.
    skip = compaction.replaced(Path(run_dir), PARTS_DIR)
    files = [f for f in sorted((Path(run_dir) / STEPS_DIR).glob("part-*.parquet"))
             if (Path(run_dir) / PARTS_DIR / f.name).exists() and f.name not in skip]
    if not files:
        table = step_schema().empty_table()
        return table.select(columns) if columns else table
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files],
                            promote_options="permissive")


def _read_part(path: Path, columns: list[str] | None) -> pa.Table | None:
    """One part, or None (said in one line) when it is corrupt or truncated: the rest of
    the run stays readable, and a resume reruns what it held."""
    try:
        file = pq.ParquetFile(path)
        if columns is None:
            return file.read()
        # A part from an older schema lacks newer columns (task_fingerprint): nulls.
        names = set(file.schema_arrow.names)
        table = file.read(columns=[c for c in columns if c in names])
        schema = arrow_schema()
        for column in columns:
            if column not in names:
                kind = schema.field(column).type
                table = table.append_column(column, pa.nulls(table.num_rows, kind))
        return table.select(columns)
    except (OSError, pa.ArrowException) as exc:
        log.warning("skipping unreadable part %s (%s); a --resume of the run moves it to "
                    "%s/ and reruns its rollouts", path, _first_line(exc), QUARANTINE_DIR)
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def quarantine_unreadable(run_dir: str | Path) -> list[Path]:
    """Move every part that cannot be read whole to `<run_dir>/quarantine/`, one line each;
    returns where they went. Their rollouts count as not done, so a resume reruns them."""
    moved = []
    for path in parts(run_dir):
        try:
            pq.read_table(path)
            continue
        except (OSError, pa.ArrowException) as exc:
            reason = _first_line(exc)
        target = Path(run_dir) / QUARANTINE_DIR / path.name
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        log.warning("quarantined unreadable part %s -> %s (%s); its rollouts run again",
                    path, target, reason)
        moved.append(target)
    return moved


def latest_per_key(table: pa.Table) -> pa.Table:
    """One row per rollout_key: the latest by finished_at, then by the order written."""
    import pyarrow.compute as pc

    keys = table.column("rollout_key")
    if table.num_rows == 0 or pc.count_distinct(keys).as_py() == table.num_rows:
        return table
    order = pa.array(range(table.num_rows), pa.int64())
    indexed = table.append_column("_order", order)
    ranked = indexed.take(pc.sort_indices(indexed, options=pc.SortOptions([
        ("rollout_key", "ascending", "at_start"), ("finished_at", "ascending", "at_start"),
        ("_order", "ascending", "at_start")])))
    sorted_keys = ranked.column("rollout_key")
    n = ranked.num_rows
    # The last row of each run of equal keys is its latest.
    last = pc.not_equal(sorted_keys.slice(0, n - 1), sorted_keys.slice(1))
    mask = pa.concat_arrays([*last.chunks, pa.array([True])]) if n > 1 else pa.array([True])
    kept = ranked.filter(mask).sort_by("_order")
    return kept.drop_columns(["_order"])


def duplicate_rows(run_dir: str | Path) -> tuple[int, int]:
    """(extra rows, keys affected): rollout_keys written more than once in the parts."""
    import pyarrow.compute as pc

    files = parts(run_dir)
    if not files:
        return 0, 0
    tables = [t for f in files if (t := _read_part(f, ["rollout_key"])) is not None]
    chunks = [chunk for t in tables for chunk in t.column(0).chunks]
    if not chunks:
        return 0, 0
    keys = pa.concat_arrays(chunks)
    counts = pc.value_counts(keys).field("counts")
    repeated = pc.filter(counts, pc.greater(counts, 1))
    return int(pc.sum(repeated).as_py() or 0) - len(repeated), len(repeated)


def done_keys(run_dir: str | Path) -> dict[str, int | None]:
    """rollout_key → its task's fingerprint (as an int; None for rows written before
    fingerprints) for every row already written: what `--resume` skips, unless the task
    under that key has changed since."""
    if not parts(run_dir):
        return {}
    table = read_results(run_dir, columns=["rollout_key", "task_fingerprint"])
    keys, prints = table.column(0).to_pylist(), table.column(1).to_pylist()
    return {k: (int(p, 16) if p else None) for k, p in zip(keys, prints, strict=True)}


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if not Path(run_dir).is_dir():
            raise RunDirError(f"{run_dir}: no such run directory") from None
        raise RunDirError(f"{run_dir}: no {MANIFEST} (not a hud_ray run directory)") from None
    except ValueError as exc:
        raise RunDirError(f"{path}: unreadable manifest: {exc}") from None


def _warm_parquet_writer(schema: pa.Schema) -> None:
    with contextlib.suppress(Exception):
        pq.write_table(schema.empty_table(), io.BytesIO())


def _write_atomically(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultWriter:
    """Streams rows into Parquet parts and keeps the manifest current."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict[str, Any],
        resume: bool = False,
        flush_rows: int = 500,
        flush_s: float = 2.0,
        scrubber: Scrubber | None = None,
        incarnation: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        # Secret values of this run, removed from every row and the manifest before disk.
        self.scrubber = scrubber or Scrubber()
        # This writer's driver start: in its part names and in the run's writer lock.
        self.incarnation = incarnation or new_incarnation()
        self.lock = RunLock(self.run_dir, self.incarnation)
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.schema = arrow_schema()
        self.step_schema = step_schema()
        self._buffer: list[dict[str, Any]] = []
        self._step_buffer: list[dict[str, Any]] = []
        self._written: list[pa.RecordBatch] = []  # batches not yet handed to a stream
        # As if the last flush were long ago: the first rows go to disk as soon as they
        # land (a run's first row must not wait out the timer), later ones every flush_s.
        self._last_flush = float("-inf")
        self.counts: Counter[str] = Counter()
        self.rows_written = 0
        self.superseded = 0  # done rollouts rerun (task changed): their old rows are stale
        self.own_parts: list[tuple[str, int]] = []  # (name, rows) this writer wrote
        self._prepare_dir(config, resume)
        # pyarrow's first Parquet write pays seconds of lazy setup; pay it off the
        # critical path so the first row lands as soon as the first rollout ends.
        threading.Thread(target=_warm_parquet_writer, args=(self.schema,), daemon=True).start()

    def _prepare_dir(self, config: dict[str, Any], resume: bool) -> None:
        manifest_path = self.run_dir / MANIFEST
        try:
            (self.run_dir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
            (self.run_dir / STEPS_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"output directory {self.run_dir} is not writable: {exc}") from None
        if not os.access(self.run_dir, os.W_OK):
            raise RunDirError(f"output directory {self.run_dir} is not writable")
        try:  # before anything is read or written: one writer per run directory
            self.lock.acquire()
        except RunLockedError as exc:
            raise RunDirError(str(exc)) from None
        try:
            # A compaction a crash cut short: completed or undone before anything is read.
            done = compaction.finish(self.run_dir, PARTS_DIR, STEPS_DIR)
            if done:
                log.warning("%s: an interrupted compaction was %s", self.run_dir, done)
            self._open_manifest(manifest_path, config, resume)
        except BaseException:
            self.lock.release()
            raise

    def _open_manifest(self, manifest_path: Path, config: dict[str, Any], resume: bool) -> None:
        existing = parts(self.run_dir)
        if manifest_path.exists() and existing and not resume:
            raise RunDirError(
                f"{self.run_dir} already holds results; pass --resume to continue it "
                "or choose another --run-id"
            )
        if resume and manifest_path.exists():
            previous = read_manifest(self.run_dir)
            _check_same_config(self.run_dir, previous.get("config", {}), config)
            self.manifest = previous
            self.manifest["resumed_at"] = utcnow().isoformat()
            moved = quarantine_unreadable(self.run_dir)
            if moved:
                self.manifest.setdefault("quarantined", []).extend(str(p) for p in moved)
            existing = parts(self.run_dir)
            # Counted from what is on disk, not the manifest: a killed driver counted rows
            # it never flushed, and a quarantined part's rows are gone.
            statuses = read_results(self.run_dir, columns=["status"]).column("status")
            self.counts.update(statuses.to_pylist())
        else:
            self.manifest = {
                "run_id": self.run_dir.name,
                "config": config,
                "versions": _versions(),
                "started_at": utcnow().isoformat(),
                "finished_at": None,
                "state": "running",
                "counts": {},
            }
        self.manifest["state"] = "running"
        self.manifest.setdefault("incarnations", []).append({
            "incarnation": self.incarnation, "driver": driver_identity(),
            "started_at": utcnow().isoformat()})
        self._next_part = max(_part_seq(p) for p in existing) + 1 if existing else 0
        self.write_manifest()

    # --- rows --------------------------------------------------------------------------
    def add(self, row: dict[str, Any]) -> pa.RecordBatch | None:
        """Buffer one row; returns the batch written if this triggered a flush."""
        self._step_buffer.extend(row.pop("_steps", None) or ())
        self._buffer.append(self.scrubber.row(row) if self.scrubber else row)
        self.counts[row["status"]] += 1
        if len(self._buffer) >= self.flush_rows:
            return self.flush()
        return None

    def maybe_flush(self) -> pa.RecordBatch | None:
        if self._buffer and time.monotonic() - self._last_flush >= self.flush_s:
            return self.flush()
        return None

    def flush(self) -> pa.RecordBatch | None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return None
        batch = pa.RecordBatch.from_pylist(self._buffer, schema=self.schema)
        # The incarnation in the name: no two drivers can ever write the same part.
        name = f"part-{self._next_part:05d}-{self.incarnation}.parquet"
        # Steps first: a rollouts part on disk means its steps are there too (a resume
        # skips what rollouts/ holds, so steps written without it would be rerun twice).
        if self._step_buffer:
            steps = pa.Table.from_pylist(self._step_buffer, schema=self.step_schema)
            _write_atomically(steps, self.run_dir / STEPS_DIR / name)
            self._step_buffer = []
        _write_atomically(pa.Table.from_batches([batch]), self.run_dir / PARTS_DIR / name)
        self._next_part += 1
        self.own_parts.append((name, len(self._buffer)))
        self.rows_written += len(self._buffer)
        self._buffer = []
        self.write_manifest()
        self._written.append(batch)
        return batch

    def compact(self) -> None:
        """Merge this writer's parts into few (`hud_ray.compaction`): a long run ends as a
        handful of files. A failure leaves the parts as they were (each one durable)."""
        for names in compaction.plan(self.own_parts):
            into = f"part-{self._next_part:05d}-{self.incarnation}.parquet"
            try:
                compaction.compact(self.run_dir, PARTS_DIR, STEPS_DIR, names, into,
                                   self.schema, self.step_schema)
            except (OSError, pa.ArrowException) as exc:
                log.warning("%s: compaction skipped, parts kept as written (%s)",
                            self.run_dir, _first_line(exc))
                compaction.finish(self.run_dir, PARTS_DIR, STEPS_DIR)
                return
            self._next_part += 1
            merged = set(names)
            rows = sum(n for name, n in self.own_parts if name in merged)
            self.own_parts = [p for p in self.own_parts if p[0] not in merged]
            self.own_parts.append((into, rows))

    def take_batches(self) -> list[pa.RecordBatch]:
        """Batches written since the last call (what `stream_distributed` yields)."""
        batches, self._written = self._written, []
        return batches

    # --- manifest ----------------------------------------------------------------------
    def note(self, **fields: Any) -> None:
        """Record extra facts in the manifest (e.g. SSH host-key fingerprints)."""
        self.manifest.setdefault("notes", {}).update(fields)
        self.write_manifest()

    def write_manifest(self) -> None:
        self.manifest["counts"] = dict(self.counts)
        self.manifest["updated_at"] = utcnow().isoformat()
        manifest = self.scrubber.value(self.manifest) if self.scrubber else self.manifest
        _atomic_write_text(self.run_dir / MANIFEST, json.dumps(manifest, indent=2, default=str))

    def close(self, state: str = "finished", **extra: Any) -> None:
        self.flush()
        self.compact()
        if self.superseded:  # an old row and its rerun: count each rollout once
            statuses = read_results(self.run_dir, columns=["status"]).column("status")
            self.counts = Counter(statuses.to_pylist())
            self.manifest["superseded_rows"] = (self.manifest.get("superseded_rows", 0)
                                                + self.superseded)
        self.manifest["state"] = state
        self.manifest["finished_at"] = utcnow().isoformat()
        self.manifest.update(extra)
        self.write_manifest()
        self.lock.release()


# Settings that change what a rollout means; a resume must match them.
RESUME_KEYS = ("tasks", "agent", "provider", "repeats", "variant", "sweep")


def _check_same_config(run_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diffs = [
        f"{key}: was {old.get(key)!r}, now {new.get(key)!r}"
        for key in RESUME_KEYS
        if key in old and old.get(key) != new.get(key)
        and not (key == "tasks" and _same_task_file(old, new))
    ]
    if diffs:
        raise RunDirError(
            f"cannot resume {run_dir} with a different config ({'; '.join(diffs)}); "
            "use a new --run-id"
        )


def _same_task_file(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """One task file however its path is spelt (relative, absolute, a link), or a copy
    with the same bytes. Rows edited in place are the per-row fingerprints' business."""
    old_path, new_path = old.get("tasks"), new.get("tasks")
    if not isinstance(old_path, str) or not isinstance(new_path, str):
        return False
    if old.get("tasks_realpath") and old["tasks_realpath"] == new.get("tasks_realpath"):
        return True
    return bool(old.get("tasks_sha256")) and old.get("tasks_sha256") == new.get("tasks_sha256")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("hud-ray", "ray", "pyarrow", "pydantic"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and mean reward by template (for the end-of-run summary)."""
    counts: Counter[str] = Counter()
    rewards: dict[str, list[float]] = {}
    for row in rows:
        counts[row["status"]] += 1
        if row.get("reward") is not None:
            rewards.setdefault(row["template_id"], []).append(row["reward"])
    return {
        "counts": dict(counts),
        "mean_reward": {k: sum(v) / len(v) for k, v in sorted(rewards.items())},
    }
