"""The viewer through a real headless chromium, on real runs served by `hud-ray view`:
the numbers on the pages equal `hud-ray report`'s and duckdb's own answers."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from hud_ray.results import read_results

from .conftest import Viewer, hud_ray, open_page, screenshot

pytestmark = [pytest.mark.slow]


def _f3(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def test_runs_list_and_overview_equal_report(viewer: Viewer, runs_dir: Path, page) -> None:
    open_page(page, f"{viewer.base}/#/", "runs")
    assert set(page.locator("#runs-table tr[data-run]").evaluate_all(
        "rows => rows.map(r => r.dataset.run)")) == {"ra", "rb", "syn"}
    for run_id in ("ra", "syn"):
        report = json.loads(hud_ray("report", str(runs_dir / run_id), "--json").stdout)
        open_page(page, f"{viewer.base}/#/run/{run_id}", f"overview-{run_id}")
        assert page.locator("#cards [data-field=rows]").inner_text() == str(report["rows"])
        for status, n in report["status"].items():
            assert page.locator(f"#cards [data-status={status}]").inner_text() == str(n)
        for t in report["templates"]:
            row = page.locator(f"#templates tr[data-template='{t['template']}']"
                               f"[data-variant='{t['variant']}']")

            def cell(field: str, row=row) -> str:
                return row.locator(f"td[data-field='{field}']").inner_text()

            assert cell("rollouts") == str(t["rollouts"])
            assert cell("failed") == str(t["failed"])
            assert cell("mean_reward") == _f3(t["mean_reward"])
            assert cell("pass@1") == _f3(t["pass@1"])
            ci = t["ci95"]
            assert cell("ci95") == (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-")
        for phase, v in report["phases"].items():
            row = page.locator(f"#phases tr[data-phase='{phase}']")
            assert row.locator("td[data-field=p95]").inner_text() == _f3(v["p95"])
    # The synthetic run has variants: the side-by-side table equals the report's too.
    for v in report["variants"]:
        row = page.locator(f"#variants tr[data-variant='{v['variant']}']")
        assert row.locator("td[data-field=mean_reward]").inner_text() == _f3(v["mean_reward"])


def _count(page) -> int:
    page.wait_for_function("(document.querySelector('#count') || {}).textContent?.match(/^\\d+$/)")
    return int(page.locator("#count").inner_text())


def test_filters_equal_duckdb_and_live_in_the_url(viewer: Viewer, runs_dir: Path, page) -> None:
    parts = str(runs_dir / "syn" / "rollouts" / "part-*.parquet")
    expected = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{parts}') WHERE status IN ('ok', 'timeout') "
        "AND template_id = 'tmpl-2' AND reward >= 1 AND variant = 'B'").fetchall()[0][0]
    url = (f"{viewer.base}/#/run/syn/rollouts?status=ok,timeout&template=tmpl-2"
           "&reward_min=1&variant=B")
    open_page(page, url)
    assert _count(page) == expected
    screenshot(page, "rollouts")
    # A filter changed on the page lands in the URL: a reload of it shows the same rows.
    page.locator("input[name=q]").fill("task-0001")
    page.locator("input[name=q]").press("Enter")
    page.wait_for_function("location.hash.includes('q=task-0001')")
    narrowed = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{parts}') WHERE status IN ('ok', 'timeout') "
        "AND template_id = 'tmpl-2' AND reward >= 1 AND variant = 'B' AND "
        "(prompt ILIKE '%task-0001%' OR answer ILIKE '%task-0001%' OR "
        "error_message ILIKE '%task-0001%' OR slug ILIKE '%task-0001%')").fetchall()[0][0]
    page.wait_for_function(f"document.querySelector('#count').textContent === '{narrowed}'")
    deep_link = page.url
    page.goto("about:blank")
    open_page(page, deep_link)
    assert _count(page) == narrowed


def test_rollout_page_shows_tool_calls_and_results(viewer: Viewer, runs_dir: Path, page) -> None:
    rows = read_results(runs_dir / "ra").to_pylist()
    row = next(r for r in rows if r["status"] == "ok" and r["n_tool_calls"])
    key = row["rollout_key"]
    open_page(page, f"{viewer.base}/#/run/ra/rollout/{key.replace('#', '%23')}")
    page.wait_for_selector(".step.tool")
    tool = page.locator(".step.tool").first
    assert "tool: solve" in tool.locator(".meta").inner_text()
    assert json.dumps(row["prompt"])[1:20] in tool.inner_text()  # the full arguments
    # The long result is collapsed, never cut: all of it is there once opened.
    long = tool.locator("details.long")
    assert "chars, click to expand" in long.locator("summary").inner_text()
    long.locator("summary").click()
    assert "END-OF-RESULT" in long.inner_text()
    assert page.locator(".step.llm .meta").first.inner_text().count("view-test-1") == 1
    screenshot(page, "rollout")
    page.locator(".tsearch").fill("final:")
    page.wait_for_function("document.querySelector('.tcount').textContent.startsWith('1 step')")


def _flips(runs_dir: Path) -> set[str]:
    def rates(run: str) -> dict[str, float]:
        by: dict[str, list[float]] = {}
        for r in read_results(runs_dir / run).to_pylist():
            ok = r["status"] == "ok" and (r["reward"] or 0) >= 1.0
            by.setdefault(r["slug"], []).append(float(ok))
        return {k: sum(v) / len(v) for k, v in by.items()}
    a, b = rates("ra"), rates("rb")
    return {t for t in a.keys() & b.keys() if a[t] != b[t]}


def test_compare_flip_list_equals_the_tests(viewer: Viewer, runs_dir: Path, page) -> None:
    expected = _flips(runs_dir)
    assert expected  # B refuses arithmetic: those tasks flip
    open_page(page, f"{viewer.base}/#/compare?a=ra&b=rb")
    page.wait_for_selector("#flips")
    shown = set(page.locator("#flips tr[data-slug]").evaluate_all(
        "rows => rows.map(r => r.dataset.slug)"))
    assert shown == expected
    assert int(page.locator("#wins").inner_text()) == len(expected)
    screenshot(page, "compare")
    page.locator("#flips tr[data-slug]").first.click()
    page.wait_for_selector("#pa .step.tool")
    page.wait_for_selector("#pb .step.tool")
    assert "refused" in page.locator("#pb").inner_text()
    screenshot(page, "compare-pair")


def test_compare_two_variants_of_a_sweep(viewer: Viewer, runs_dir: Path, page) -> None:
    from hud_ray.view.analysis import compare

    rows = read_results(runs_dir / "syn").to_pylist()
    expected = compare([r for r in rows if r["variant"] == "B"],
                       [r for r in rows if r["variant"] == "A"])
    open_page(page, f"{viewer.base}/#/compare?a=syn&a_variant=B&b=syn&b_variant=A")
    page.wait_for_selector("#flips")
    shown = page.locator("#flips tr[data-slug]").evaluate_all(
        "rows => rows.map(r => r.dataset.slug)")
    assert shown == [f["slug"] for f in expected["flips"]]
    assert int(page.locator("#wins").inner_text()) == expected["wins"]
    assert int(page.locator("#losses").inner_text()) == expected["losses"]


def test_live_row_appears_without_reload(viewer: Viewer, runs_dir: Path, page) -> None:
    from hud_ray.view.synthetic import rollout_row, write_run

    writer = write_run(runs_dir / "live", 10, close=False)
    try:
        open_page(page, f"{viewer.base}/#/run/live/rollouts")
        assert _count(page) == 10
        page.evaluate("window.__sameDocument = true")
        for i in range(10, 13):
            writer.add(rollout_row(i, variant=None, tasks=100, skill=1, seed=0, t0=_now()))
        writer.flush()
        page.wait_for_function("document.querySelector('#count').textContent === '13'",
                               timeout=15_000)
        assert page.evaluate("window.__sameDocument") is True  # no reload happened
        # The runs list too: its line for the live run moves as rows land.
        open_page(page, f"{viewer.base}/#/")
        cell = "document.querySelector('tr[data-run=live] td[data-field=rows]').textContent"
        assert page.evaluate(cell) == "13"
        writer.add(rollout_row(13, variant=None, tasks=100, skill=1, seed=0, t0=_now()))
        writer.flush()
        page.wait_for_function(f"{cell} === '14'", timeout=15_000)
    finally:
        writer.close()


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_triage_and_distributions_pages(viewer: Viewer, page) -> None:
    open_page(page, f"{viewer.base}/#/run/syn/triage", "triage")
    first = page.locator("#clusters tr.click").first
    count = int(first.locator("td").first.inner_text())
    first.click()
    page.wait_for_function("location.hash.includes('cluster=')")
    assert _count(page) == count
    open_page(page, f"{viewer.base}/#/run/syn/triage")
    nodes = page.locator("#fleet tr[data-node]").evaluate_all("rows => rows.map(r => r.dataset.node)")
    assert sorted(nodes) == ["node00", "node01", "node02"]
    open_page(page, f"{viewer.base}/#/run/syn/dist", "distributions")
    assert page.locator("canvas").count() == 4


def test_static_export_opens_from_file(runs_dir: Path, tmp_path: Path, page) -> None:
    out = tmp_path / "bundle"
    done = hud_ray("view", str(runs_dir / "ra"), "--export", str(out))
    assert "file://" in done.stdout
    report = json.loads(hud_ray("report", str(runs_dir / "ra"), "--json").stdout)
    open_page(page, (out / "index.html").as_uri() + "#/run/ra", "static-export")
    assert page.locator("#cards [data-field=rows]").inner_text() == str(report["rows"])
    open_page(page, (out / "index.html").as_uri() + "#/run/ra/rollouts?status=ok")
    assert _count(page) == report["status"]["ok"]


def test_token_required_off_loopback(runs_dir: Path, page) -> None:
    import urllib.error
    import urllib.request

    server = Viewer(str(runs_dir / "ra"), "--host", "0.0.0.0", "--port", "0")
    try:
        assert "?token=" in server.url
        local = server.base.replace("0.0.0.0", "127.0.0.1")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{local}/api/runs", timeout=10)
        assert refused.value.code == 401
        wrong = urllib.request.Request(f"{local}/api/runs",
                                       headers={"Authorization": "Bearer nope"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong, timeout=10)
        page.goto(f"{local}/")
        assert "token is required" in page.content()
        token = server.url.split("?token=")[1]
        open_page(page, f"{local}/?token={token}")  # the cookie carries it from here on
        assert "token=" not in page.url
        page.wait_for_selector("#runs-table")
    finally:
        server.stop()


def test_sql_box_page(viewer: Viewer, runs_dir: Path, page) -> None:
    open_page(page, f"{viewer.base}/#/run/syn/sql")
    page.locator("textarea[name=sql]").fill(
        "SELECT variant, count(*) AS n FROM rollouts GROUP BY 1 ORDER BY 1")
    page.locator("#sqlform button").click()
    page.wait_for_function("document.querySelector('#sqlinfo').textContent.startsWith('2 row')")
    assert page.locator("#sqlgrid .tabulator-row").count() == 2
    screenshot(page, "sql")
    page.locator("textarea[name=sql]").fill("COPY rollouts TO 'x.csv'")
    page.locator("#sqlform button").click()
    page.wait_for_function("document.querySelector('#banner').textContent.includes('only SELECT')")
    assert not (Path.cwd() / "x.csv").exists()
