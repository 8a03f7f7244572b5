"""What each page shows, computed over a run's rows with duckdb (Arrow in, JSON out).

The overview's numbers are `hud_ray.report.build_report`'s, called on the same rows, so
the page and `hud-ray report` cannot disagree; the rest (throughput, retries, filters,
histograms) is SQL over the `rollouts` table registered from the run's Arrow rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import duckdb
import pyarrow as pa

from hud_ray.report import build_report
from hud_ray.schema import arrow_schema

# Big JSON/text columns: the table shows a 200-character head, the rollout page the rest.
HEAVY = ("args", "grade", "steps", "columns", "prompt", "answer", "error_message")
REPORT_COLUMNS = ("status", "variant", "template_id", "group_id", "reward", "error_type",
                  "throttle_s", "provision_s", "ready_s", "start_s", "agent_s", "grade_s",
                  "teardown_s", "total_s", "n_turns", "prompt_tokens", "completion_tokens",
                  "cost_usd", "n_tool_calls", "n_tool_errors")
TEXT_FILTERS = {"template": "template_id", "variant": "variant", "error_type": "error_type",
                "provider": "provider", "node": "node_id", "model": "model", "slug": "slug"}


def connect(table: pa.Table) -> duckdb.DuckDBPyConnection:
    """A private in-memory duckdb holding `rollouts` (zero-copy over the Arrow rows)."""
    con = duckdb.connect(":memory:")
    con.register("rollouts", table)
    return con


def columns() -> list[str]:
    return list(arrow_schema().names)


def overview(table: pa.Table) -> dict[str, Any]:
    """The report's numbers plus what a dashboard adds: throughput over time, retries,
    sandbox-seconds and cost."""
    report = build_report(table.select(list(REPORT_COLUMNS)))
    con = connect(table)
    totals = con.sql("""
        SELECT count(*), coalesce(sum(attempts - 1), 0), count_if(attempts > 1),
               sum(sandbox_seconds), sum(cost_usd), count(cost_usd),
               min(started_at), max(finished_at)
        FROM rollouts""").fetchall()[0]
    _, retries, retried, sandbox_s, cost, priced, first, last = totals
    span = (last - first).total_seconds() if first and last else 0.0
    bucket = max(1, math.ceil(span / 60)) if span else 1  # at most ~60 points
    points = con.sql(f"""
        SELECT floor(epoch(finished_at) / {bucket}) * {bucket} AS t, count(*), count_if(status = 'ok')
        FROM rollouts WHERE finished_at IS NOT NULL GROUP BY t ORDER BY t""").fetchall()
    per_variant = con.sql("""
        SELECT coalesce(variant, ''), count_if(status = 'ok' AND reward >= 1),
               sum(cost_usd), count(cost_usd), count(*), sum(sandbox_seconds)
        FROM rollouts GROUP BY 1 ORDER BY 1""").fetchall()
    report["extra"] = {
        # Dollars per solved task: what a variant's gain costs (NULL when any row is unpriced).
        "cost_per_solved": [
            {"variant": v, "solved": solved, "cost_usd": c if priced == n else None,
             "usd_per_solved": c / solved if solved and c is not None and priced == n else None,
             "sandbox_seconds": sbx}
            for v, solved, c, priced, n, sbx in per_variant],
        "retries": int(retries), "retried_rollouts": int(retried),
        "sandbox_seconds": sandbox_s, "cost_usd": cost, "priced_rollouts": int(priced),
        "started": first.isoformat() if first else None,
        "last_finished": last.isoformat() if last else None,
        "throughput": {"bucket_s": bucket, "t": [p[0] for p in points],
                       "rows_per_s": [p[1] / bucket for p in points],
                       "ok_per_s": [p[2] / bucket for p in points]},
    }
    return report


def where(params: Mapping[str, str]) -> tuple[str, list[Any]]:
    """The SQL WHERE for a table's filters (the same ones the URL holds)."""
    clauses, args = [], []
    if statuses := [s for s in params.get("status", "").split(",") if s]:
        clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
        args += statuses
    for name, column in TEXT_FILTERS.items():
        values = [v for v in params.get(name, "").split(",") if v]
        if values:
            # "(none)" picks the rows where the column is NULL (e.g. no error class)
            named = [v for v in values if v != "(none)"]
            parts = [f"{column} IN ({', '.join('?' * len(named))})"] if named else []
            if "(none)" in values:
                parts.append(f"{column} IS NULL")
            clauses.append("(" + " OR ".join(parts) + ")")
            args += named
    for name, op in (("reward_min", ">="), ("reward_max", "<=")):
        if params.get(name, "") != "":
            clauses.append(f"reward {op} ?")
            args.append(_number(name, params[name]))
    if text := params.get("q", "").strip():
        clauses.append("(prompt ILIKE ? OR answer ILIKE ? OR error_message ILIKE ? "
                       "OR slug ILIKE ?)")
        args += [f"%{text}%"] * 4
    if keys := [k for k in params.get("keys", "").split(",") if k]:
        clauses.append(f"rollout_key IN ({', '.join('?' * len(keys))})")
        args += keys
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"filter {name}={text!r}: expected a number") from None


def order_by(params: Mapping[str, str]) -> str:
    sort = params.get("sort") or "finished_at"
    if sort not in columns():
        raise ValueError(f"sort={sort!r}: no such column")
    direction = "ASC" if params.get("dir", "desc").lower() == "asc" else "DESC"
    return f'ORDER BY "{sort}" {direction} NULLS LAST, rollout_key'


def list_columns() -> str:
    return ", ".join(f'left("{c}", 200) AS "{c}"' if c in HEAVY else f'"{c}"'
                     for c in columns())


def rollouts_page(table: pa.Table, params: Mapping[str, str]) -> dict[str, Any]:
    """One page of the filtered, sorted rows (Tabulator's remote pagination answer)."""
    size = min(1000, max(1, int(params.get("size") or 100)))
    page = max(1, int(params.get("page") or 1))
    clause, args = where(params)
    con = connect(table)
    total = con.sql(f"SELECT count(*) FROM rollouts {clause}", params=args).fetchall()[0][0]
    rows = con.sql(f"SELECT {list_columns()} FROM rollouts {clause} {order_by(params)} "
                   f"LIMIT {size} OFFSET {(page - 1) * size}", params=args).to_arrow_table()
    return {"last_page": max(1, math.ceil(total / size)), "last_row": total,
            "data": _json_rows(rows)}


def filtered(table: pa.Table, params: Mapping[str, str]) -> pa.Table:
    """Every filtered row, whole (what an export writes)."""
    clause, args = where(params)
    return connect(table).sql(f"SELECT * FROM rollouts {clause} {order_by(params)}",
                              params=args).to_arrow_table()


def facets(table: pa.Table) -> dict[str, list[Any]]:
    """The values each filter can take, with counts (for the filter pickers)."""
    con = connect(table)
    out = {}
    for name, column in {"status": "status", **TEXT_FILTERS}.items():
        if name in ("slug",):
            continue
        out[name] = [[v if v is not None else "(none)", n] for v, n in con.sql(
            f"SELECT {column}, count(*) FROM rollouts GROUP BY 1 ORDER BY 2 DESC LIMIT 200"
        ).fetchall()]
    return out


def rollout(table: pa.Table, key: str) -> dict[str, Any] | None:
    rows = connect(table).sql("SELECT * FROM rollouts WHERE rollout_key = ?",
                              params=[key]).to_arrow_table()
    return _json_rows(rows)[0] if rows.num_rows else None


def _json_rows(table: pa.Table) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if hasattr(value, "isoformat"):
                row[key] = value.isoformat()
            elif isinstance(value, float) and not math.isfinite(value):
                row[key] = None
    return rows


def histograms(table: pa.Table, bins: int = 30) -> dict[str, Any]:
    """Reward, duration, tokens and cost per variant, binned on one shared axis each."""
    con = connect(table)
    measures = {"reward": "reward", "total_s": "total_s",
                "tokens": "prompt_tokens + completion_tokens", "cost_usd": "cost_usd"}
    out: dict[str, Any] = {}
    for name, expr in measures.items():
        lo, hi = con.sql(f"SELECT min({expr}), max({expr}) FROM rollouts").fetchall()[0]
        if lo is None:
            out[name] = None
            continue
        width = (hi - lo) / bins if hi > lo else 1.0
        counts = con.sql(f"""
            SELECT coalesce(variant, ''), least({bins - 1}, floor(({expr} - ?) / ?))::INT AS b,
                   count(*)
            FROM rollouts WHERE {expr} IS NOT NULL GROUP BY 1, 2""", params=[lo, width]).fetchall()
        series: dict[str, list[int]] = {}
        for variant, b, n in counts:
            series.setdefault(variant, [0] * bins)[b] += n
        out[name] = {"edges": [lo + i * width for i in range(bins + 1)], "series": series}
    return out


def fleet(table: pa.Table) -> list[dict[str, Any]]:
    """Outcomes by provider and node: failures, retries, sandbox start (provision + ready)
    and total p50/p95 — a bad node shows up here before it shows up in the rewards."""
    rows = connect(table).sql("""
        SELECT provider, coalesce(node_id, '-') AS node, count(*) AS rollouts,
               count_if(status != 'ok') AS failed, count_if(status = 'infra_error') AS infra,
               coalesce(sum(attempts - 1), 0) AS retries,
               quantile_cont(provision_s + ready_s, 0.5) AS start_p50,
               quantile_cont(provision_s + ready_s, 0.95) AS start_p95,
               quantile_cont(total_s, 0.95) AS total_p95
        FROM rollouts GROUP BY 1, 2 ORDER BY failed DESC, rollouts DESC LIMIT 500""")
    names = rows.columns
    return [dict(zip(names, r, strict=True)) for r in rows.fetchall()]


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN and infinities as null (JSON has neither), dates as ISO text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
