"""Exports: the filtered rollouts (or their steps) as Parquet or JSONL, for SFT or RL; and
`hud-ray view RUN --export DIR`, a static bundle that opens from disk with no server."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from starlette.responses import Response

from hud_ray.view import analysis, queries
from hud_ray.view.runs import STEP_VIEW_COLUMNS, RunData, read_steps_of, run_summary

STATIC = Path(__file__).parent / "static"


def encode(table: pa.Table, fmt: str) -> bytes:
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    if fmt == "jsonl":
        rows = queries._json_rows(table)
        return "".join(json.dumps(r, default=str) + "\n" for r in rows).encode()
    raise ValueError(f"format={fmt!r}: expected parquet or jsonl")


def export_bytes(run: RunData, table: pa.Table, params: Mapping[str, str]) -> Response:
    """The rows the filters select (`what=rollouts`) or their steps (`what=steps`)."""
    fmt, what = params.get("format", "parquet"), params.get("what", "rollouts")
    rows = queries.filtered(table, params)
    if what == "steps":
        rows = read_steps_of(run, rows.column("rollout_key").to_pylist())
    elif what != "rollouts":
        raise ValueError(f"what={what!r}: expected rollouts or steps")
    name = f"{run.run_id}-{what}.{fmt}"
    return Response(encode(rows, fmt), media_type="application/octet-stream",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


def static_bundle(runs: list[RunData], out: Path) -> Path:
    """index.html + the vendored assets + data.js (every answer the pages ask for, as one
    script: a page opened from file:// may load scripts but not fetch JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(STATIC, out / "static", dirs_exist_ok=True)
    bundle: dict[str, Any] = {"runs": [], "run": {}}
    for run in runs:
        summary = run_summary(run)
        bundle["runs"].append(summary)
        if summary["state"] == "unreadable":
            continue
        table, _ = run.table()
        steps = read_steps_of(run, table.column("rollout_key").to_pylist(), STEP_VIEW_COLUMNS)
        by_key: dict[str, list[dict[str, Any]]] = {}
        for step in queries._json_rows(steps):
            by_key.setdefault(step["rollout_key"], []).append(step)
        bundle["run"][run.run_id] = {
            "overview": {"run": summary, **queries.overview(table)},
            "facets": {"columns": queries.columns(), **queries.facets(table)},
            "rows": queries._json_rows(table), "steps": by_key,
            "triage": analysis.triage(table), "dist": queries.histograms(table)}
    text = json.dumps(queries.json_safe(bundle), default=str).replace("</", "<\\/")
    (out / "data.js").write_text(f"window.HUDRAY_BUNDLE = {text};\n")
    html = (STATIC / "index.html").read_text().replace(
        "<!--bundle-->", '<script src="data.js"></script>').replace('"/static/', '"static/')
    (out / "index.html").write_text(html)
    return out / "index.html"
