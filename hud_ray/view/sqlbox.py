"""The read-only SQL box: one SELECT over the run's `rollouts` and `steps`, a row limit.

Three locks, each enough on its own for its kind of harm: the statement must parse as
exactly one SELECT (no COPY, ATTACH, INSTALL, LOAD, CREATE, SET, PRAGMA); the tables are
Arrow data registered in a private in-memory database (nothing to write to); and
`enable_external_access` is off and the configuration locked before the query runs, so
no `read_csv('/etc/passwd')`, no `read_parquet` of another path, no extension loading.
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb
import pyarrow as pa

MAX_ROWS = 10_000
TIMEOUT_S = 10.0


class SqlRejected(ValueError):
    """A query the SQL box does not run (not one SELECT, or it failed)."""


def check_select(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRejected(f"SQL does not parse: {exc}") from None
    if len(statements) != 1:
        raise SqlRejected(f"one statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlRejected(f"only SELECT queries are allowed here, not {kind.name}")


def run_sql(sql: str, rollouts: pa.Table, steps: pa.Table, limit: Any = 1000) -> dict[str, Any]:
    """Columns and at most `limit` rows (≤ MAX_ROWS) of one SELECT; `truncated` says if
    more rows matched."""
    try:
        limit = max(1, min(int(limit), MAX_ROWS))
    except (TypeError, ValueError):
        raise SqlRejected(f"limit {limit!r}: expected a whole number of rows "
                          f"(1..{MAX_ROWS})") from None
    check_select(sql)
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                               "autoload_known_extensions": False})
    con.register("rollouts", rollouts)
    con.register("steps", steps)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    timer = threading.Timer(TIMEOUT_S, con.interrupt)
    timer.start()
    try:
        result = con.execute(sql)
        names = [d[0] for d in result.description or []]
        rows = result.fetchmany(limit + 1)
    except duckdb.InterruptException:
        raise SqlRejected(f"query stopped after {TIMEOUT_S:.0f} s") from None
    except duckdb.Error as exc:
        raise SqlRejected(str(exc).splitlines()[0]) from None
    finally:
        timer.cancel()
        con.close()
    return {"columns": names, "rows": [[_cell(v) for v in row] for row in rows[:limit]],
            "truncated": len(rows) > limit, "limit": limit}


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
