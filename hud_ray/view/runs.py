"""The runs a viewer serves, read from their directories and nothing else.

A run is a directory with a `manifest.json`; its rows are the `rollouts/part-*.parquet`
files the writer renamed into place (temp files are dot-named, so the glob never sees a
half-written part). Each part is read once and cached by (name, size, mtime); a run still
being written costs only its new parts on the next look. Also here: a run's line in the
runs list, and its steps (only those whose rollouts part exists, as `read_steps`).
Nothing is ever written here.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from hud_ray import compaction
from hud_ray.results import (
    MANIFEST,
    PARTS_DIR,
    STEPS_DIR,
    RunDirError,
    _read_part,
    latest_per_key,
    parts,
    read_manifest,
)
from hud_ray.runlock import LOCK_FILE
from hud_ray.schema import arrow_schema
from hud_ray.trajectory import step_schema


class RunGone(LookupError):
    """A run the viewer knew of is no longer on disk (deleted while open)."""


@dataclass
class RunData:
    """One run directory and the rows of its parts read so far."""

    run_id: str
    path: Path
    _parts: dict[str, tuple[tuple[int, int], pa.Table | None]] = field(default_factory=dict)
    _table: pa.Table | None = None
    _version: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def manifest(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise RunGone(f"run {self.run_id} ({self.path}) was deleted")
        return read_manifest(self.path)

    def table(self) -> tuple[pa.Table, str]:
        """Every row (one per rollout_key, the latest) and a version string that changes
        whenever a part is added, replaced or removed."""
        if not self.path.is_dir():
            raise RunGone(f"run {self.run_id} ({self.path}) was deleted")
        with self._lock:
            seen = {}
            for part in parts(self.path):
                try:
                    stat = part.stat()
                except FileNotFoundError:  # quarantined between the glob and the stat
                    continue
                seen[part.name] = ((stat.st_size, stat.st_mtime_ns), part)
            if {k: v[0] for k, v in seen.items()} != {k: v[0] for k, v in self._parts.items()}:
                self._refresh(seen)
            return self._table, self._version

    def _refresh(self, seen: dict[str, tuple[tuple[int, int], Path]]) -> None:
        fresh = {}
        for name, (key, path) in seen.items():
            old = self._parts.get(name)
            fresh[name] = old if old and old[0] == key else (key, _read_part(path, None))
        self._parts = fresh
        tables = [t for _, t in fresh.values() if t is not None]
        schema = arrow_schema()
        if tables:
            table = pa.concat_tables([*tables, schema.empty_table()],
                                     promote_options="permissive")
            self._table = latest_per_key(table)
        else:
            self._table = schema.empty_table()
        self._version = f"{len(fresh)}:{sum(k[0] for k, _ in fresh.values())}:" + str(
            max((k[1] for k, _ in fresh.values()), default=0))

    def unreadable_parts(self) -> list[str]:
        return sorted(name for name, (_, t) in self._parts.items() if t is None)

    def step_files(self) -> list[Path]:
        """Steps parts that count: those whose rollouts part exists (as `read_steps`)."""
        steps = sorted((self.path / STEPS_DIR).glob("part-*.parquet"))
        merged = compaction.replaced(self.path, PARTS_DIR)  # a merge at close, mid-way
        return [f for f in steps if (self.path / PARTS_DIR / f.name).exists()
                and f.name not in self.unreadable_parts() and f.name not in merged]

    def state(self, manifest: dict[str, Any]) -> str:
        """running / finished / interrupted / crashed: a manifest still saying running
        whose writer on this host is gone is a crash (the writer's lock file names it)."""
        state = manifest.get("state") or "unknown"
        if state != "running":
            return state
        try:
            owner = json.loads((self.path / LOCK_FILE).read_text() or "{}")
        except (OSError, ValueError):
            return state
        if owner.get("state") == "released":
            return "crashed"
        if owner.get("host") == socket.gethostname() and owner.get("pid"):
            return state if _pid_alive(int(owner["pid"])) else "crashed"
        return state


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """Runs found under the paths given on the command line, re-scanned on each listing
    (a run started after the viewer shows up without a restart)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self._runs: dict[str, RunData] = {}
        self._lock = threading.Lock()

    def scan(self) -> list[RunData]:
        found: list[Path] = []
        for root in self.roots:
            if (root / MANIFEST).is_file():
                found.append(root)
            elif root.is_dir():
                found += sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
        with self._lock:
            known = {r.path: r for r in self._runs.values()}
            runs = {}
            for path in found:
                run = known.get(path) or RunData(self._unique_id(path, runs), path)
                runs[run.run_id] = run
            self._runs = runs
            return list(runs.values())

    def _unique_id(self, path: Path, taken: dict[str, RunData]) -> str:
        name, n = path.name, 2
        while name in taken or name in self._runs:
            name, n = f"{path.name}~{n}", n + 1
        return name

    def get(self, run_id: str) -> RunData:
        run = self._runs.get(run_id)
        if run is None:
            self.scan()
            run = self._runs.get(run_id)
        if run is None:
            raise RunGone(f"no run {run_id!r} under {', '.join(map(str, self.roots))}")
        return run


def check_roots(paths: list[str]) -> list[Path]:
    """The paths `hud-ray view` was given, each an existing directory, or one clear error."""
    roots = []
    for text in paths:
        path = Path(text).expanduser().resolve()
        if not path.exists():
            raise RunDirError(f"{text}: no such directory")
        if not path.is_dir():
            raise RunDirError(f"{text}: not a directory (give a run directory or one "
                              "holding runs)")
        roots.append(path)
    return roots


# Token ids and logprobs are for training, not reading: the transcript leaves them out.
STEP_VIEW_COLUMNS = [c for c in step_schema().names
                     if c not in ("prompt_token_ids", "completion_token_ids", "logprobs")]


def run_summary(run: RunData) -> dict[str, Any]:
    """One line of the runs list: state, counts, reward, when, what."""
    try:
        manifest = run.manifest()
        table, version = run.table()
    except (RunDirError, RunGone) as exc:
        return {"run_id": run.run_id, "path": str(run.path), "state": "unreadable",
                "error": str(exc)}
    config = manifest.get("config") or {}
    rewards = table.column("reward").to_pylist()
    statuses = table.column("status").to_pylist()
    scored = [r if s == "ok" and r is not None else 0.0 for r, s in zip(
        rewards, statuses, strict=True)]
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return {"run_id": run.run_id, "path": str(run.path), "state": run.state(manifest),
            "rows": table.num_rows, "counts": counts, "version": version,
            "mean_reward": sum(scored) / len(scored) if scored else None,
            "started_at": manifest.get("started_at"), "finished_at": manifest.get("finished_at"),
            "updated_at": manifest.get("updated_at"),
            "expected": manifest.get("total") or config.get("total"),
            "config": {k: config.get(k) for k in ("tasks", "agent", "provider", "repeats",
                                                  "variant", "sweep") if config.get(k)},
            "variants": sorted({v for v in table.column("variant").to_pylist() if v}),
            "unreadable_parts": run.unreadable_parts()}


def read_steps_of(run: RunData, keys: list[str], columns: list[str] | None = None) -> pa.Table:
    files = run.step_files()
    if not files or not keys:
        return step_schema().empty_table().select(columns or step_schema().names)
    dataset = ds.dataset([str(f) for f in files], format="parquet", schema=step_schema())
    table = dataset.to_table(columns=columns, filter=ds.field("rollout_key").isin(keys))
    return table.sort_by([("rollout_key", "ascending"), ("index", "ascending")])


def all_steps(run: RunData) -> pa.Table:
    files = run.step_files()
    if not files:
        return step_schema().empty_table()
    return ds.dataset([str(f) for f in files], format="parquet", schema=step_schema()).to_table()
