"""The SQL box runs one read-only SELECT over the run's rows and nothing else: each way out
(writing, ATTACH, COPY, extensions, other files, settings) is tried and refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hud_ray.view.runs import RunStore
from hud_ray.view.server import build_app
from hud_ray.view.sqlbox import SqlRejected, run_sql
from hud_ray.view.synthetic import write_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sql")
    write_run(root / "r", 300, variants=("A", "B"), tasks=50)
    return root / "r"


@pytest.fixture(scope="module")
def client(run_dir: Path) -> TestClient:
    return TestClient(build_app(RunStore([run_dir.parent])), base_url="http://127.0.0.1")


def sql(client: TestClient, text: str, limit: int = 1000) -> tuple[int, dict]:
    resp = client.post("/api/runs/r/sql", json={"sql": text, "limit": limit})
    return resp.status_code, resp.json()


def test_select_over_rollouts_and_steps(client: TestClient) -> None:
    code, body = sql(client, "SELECT variant, count(*) FROM rollouts GROUP BY 1 ORDER BY 1")
    assert code == 200 and body["rows"] == [["A", 150], ["B", 150]]
    code, body = sql(client, "SELECT count(DISTINCT s.rollout_key) > 0 FROM steps s "
                             "JOIN rollouts r USING (rollout_key)")
    assert code == 200 and body["rows"] == [[True]]


def test_row_limit(client: TestClient) -> None:
    code, body = sql(client, "SELECT * FROM rollouts", limit=7)
    assert code == 200 and len(body["rows"]) == 7 and body["truncated"] is True


@pytest.mark.parametrize(("query", "says"), [
    ("CREATE TABLE t AS SELECT 1", "only SELECT"),
    ("INSERT INTO rollouts SELECT * FROM rollouts", "only SELECT"),
    ("DELETE FROM rollouts", "only SELECT"),
    ("UPDATE rollouts SET reward = 1", "only SELECT"),
    ("DROP VIEW rollouts", "only SELECT"),
    ("ATTACH '{tmp}/other.db' AS o", "only SELECT"),
    ("COPY rollouts TO '{tmp}/out.csv'", "only SELECT"),
    ("COPY (SELECT 1) TO '{tmp}/out.parquet'", "only SELECT"),
    ("EXPORT DATABASE '{tmp}/dump'", "only SELECT"),
    ("INSTALL httpfs", "only SELECT"),
    ("LOAD httpfs", "only SELECT"),
    ("SET enable_external_access = true", "only SELECT"),
    ("PRAGMA database_list", "only SELECT"),
    ("SELECT 1; DROP VIEW rollouts", "one statement"),
    ("SELECT * FROM read_csv('/etc/passwd')", "disabled by configuration"),
    ("SELECT * FROM read_text('/etc/hostname')", "disabled by configuration"),
    ("SELECT * FROM read_parquet('{run}/../*/rollouts/*.parquet')", "disabled by configuration"),
    ("SELECT * FROM glob('/*')", "disabled by configuration"),
    ("SELECT * FROM 'https://example.com/x.parquet'", "disabled by configuration"),
])
def test_refused(client: TestClient, run_dir: Path, tmp_path: Path, query: str,
                 says: str) -> None:
    code, body = sql(client, query.format(tmp=tmp_path, run=run_dir))
    assert code == 400, body
    assert says in body["error"]
    assert not any(tmp_path.iterdir())  # nothing was written anywhere


def test_bad_limit_is_named(client: TestClient) -> None:
    code, body = sql(client, "SELECT 1", limit="lots")
    assert code == 400 and body["error"] == ("limit 'lots': expected a whole number of rows "
                                             "(1..10000)")


def test_refused_in_process_too(run_dir: Path) -> None:
    import pyarrow as pa

    empty = pa.table({"x": [1]})
    with pytest.raises(SqlRejected, match="only SELECT"):
        run_sql("CALL enable_logging()", empty, empty)
    with pytest.raises(SqlRejected, match="does not parse"):
        run_sql("SELEC 1", empty, empty)
