"""Results on disk: `runs/<run_id>/manifest.json` + `rollouts/part-NNNNN.parquet`.

Rows are buffered and written as a new part every N rows or T seconds, atomically
(temp file + rename), so a crash loses at most the unflushed buffer and a reader never
sees half a file. Resume is an anti-join on `rollout_key`.
"""

from __future__ import annotations

import contextlib
import io
import json
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

from hud_ray.redact import Scrubber
from hud_ray.schema import arrow_schema, utcnow
from hud_ray.trajectory import step_schema

PARTS_DIR = "rollouts"
STEPS_DIR = "steps"
MANIFEST = "manifest.json"


class RunDirError(ValueError):
    """A run directory that cannot be used (not writable, config mismatch on resume)."""


def parts(run_dir: str | Path) -> list[Path]:
    return sorted((Path(run_dir) / PARTS_DIR).glob("part-*.parquet"))


def read_results(run_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every row of a run (also one still in progress) as one Arrow table."""
    files = parts(run_dir)
    schema = arrow_schema()
    if not files:
        table = schema.empty_table()
        return table.select(columns) if columns else table
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="permissive")


def read_steps(run_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every step of a run (one row per step; join on `rollout_key`)."""
    from hud_ray.trajectory import step_schema

    # A steps part counts once its rollouts part exists (written right after it): steps
    # of rows a crash lost between the two are rerun, and must not show up twice.
    files = [f for f in sorted((Path(run_dir) / STEPS_DIR).glob("part-*.parquet"))
             if (Path(run_dir) / PARTS_DIR / f.name).exists()]
    if not files:
        table = step_schema().empty_table()
        return table.select(columns) if columns else table
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files],
                            promote_options="permissive")


def done_keys(run_dir: str | Path) -> set[str]:
    """rollout_keys already written (what `--resume` skips)."""
    if not parts(run_dir):
        return set()
    return set(read_results(run_dir, columns=["rollout_key"]).column(0).to_pylist())


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
    ) -> None:
        self.run_dir = Path(run_dir)
        # Secret values of this run, removed from every row and the manifest before disk.
        self.scrubber = scrubber or Scrubber()
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
            self.counts.update(previous.get("counts", {}))
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
        self._next_part = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
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
        name = f"part-{self._next_part:05d}.parquet"
        # Steps first: a rollouts part on disk means its steps are there too (a resume
        # skips what rollouts/ holds, so steps written without it would be rerun twice).
        if self._step_buffer:
            steps = pa.Table.from_pylist(self._step_buffer, schema=self.step_schema)
            _write_atomically(steps, self.run_dir / STEPS_DIR / name)
            self._step_buffer = []
        _write_atomically(pa.Table.from_batches([batch]), self.run_dir / PARTS_DIR / name)
        self._next_part += 1
        self.rows_written += len(self._buffer)
        self._buffer = []
        self.write_manifest()
        self._written.append(batch)
        return batch

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
        self.manifest["state"] = state
        self.manifest["finished_at"] = utcnow().isoformat()
        self.manifest.update(extra)
        self.write_manifest()


# Settings that change what a rollout means; a resume must match them.
RESUME_KEYS = ("tasks", "agent", "provider", "repeats", "variant", "sweep")


def _check_same_config(run_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diffs = [
        f"{key}: was {old.get(key)!r}, now {new.get(key)!r}"
        for key in RESUME_KEYS
        if key in old and old.get(key) != new.get(key)
    ]
    if diffs:
        raise RunDirError(
            f"cannot resume {run_dir} with a different config ({'; '.join(diffs)}); "
            "use a new --run-id"
        )


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
