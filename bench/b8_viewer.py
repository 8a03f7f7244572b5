"""B8: `hud-ray view` on big runs — time to first paint of the overview and of the rollouts
table in a real browser (Debian's chromium through playwright), and the server's RSS, on
10,000- and 100,000-row runs.

The runs are written through hud_ray's own writer (`hud_ray.view.synthetic`: the real
schema, steps included) rather than by running 100,000 rollouts: this measures the viewer,
not the sandboxes. Each page is timed from `goto` to the moment its content is drawn
(`body[data-ready]` for the overview; the row count and the first grid row for the table),
cold (a fresh server: the Parquet parts are read then) and warm (the next visit). Baseline
in the same run: `hud-ray report RUN`, what a user waits for today to see the same numbers.
Target (issue 18): the overview of a 10,000-row run opens in ≤ 1 s.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, Bench, Row, loadavg

TARGET_S = 1.0


def _serve(run_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "hud_ray.cli", "view", str(run_dir),
                             "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"hud-ray view did not start: {line!r} {proc.stderr.read()}")
    return proc, match.group(1).rstrip("/")


def _timed(page, url: str, ready: str) -> float:
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function(ready, timeout=120_000)
    return time.perf_counter() - t0


OVERVIEW_READY = "document.body.dataset.ready === '1' && !!document.querySelector('#templates')"
TABLE_READY = ("/^\\d+$/.test((document.querySelector('#count') || {}).textContent || '') && "
               "!!document.querySelector('.tabulator-row')")


def _measure(browser, run_dir: Path, n: int) -> dict[str, float]:
    import psutil

    proc, base = _serve(run_dir)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        out = {"overview_cold_s": _timed(page, f"{base}/#/run/{run_dir.name}", OVERVIEW_READY)}
        page.goto("about:blank")
        out["overview_warm_s"] = _timed(page, f"{base}/#/run/{run_dir.name}", OVERVIEW_READY)
        page.goto("about:blank")
        out["table_s"] = _timed(page, f"{base}/#/run/{run_dir.name}/rollouts", TABLE_READY)
        page.goto("about:blank")
        out["table_filtered_s"] = _timed(
            page, f"{base}/#/run/{run_dir.name}/rollouts?status=ok&reward_min=1&q=task-0001",
            TABLE_READY)
        # Scroll the virtual grid to the bottom: the next pages load as it goes.
        page.evaluate("document.querySelector('.tabulator-tableholder').scrollTop = 1e9")
        page.wait_for_timeout(0)
        out["rss_mib"] = psutil.Process(proc.pid).memory_info().rss / 2**20
        page.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hud_ray.cli", "report", str(run_dir)], cwd=REPO,
                   capture_output=True, check=True, timeout=600)
    out["report_s"] = time.perf_counter() - t0
    return out


def run(out: Path, quick: bool) -> Bench:
    from playwright.sync_api import sync_playwright

    from hud_ray.view.synthetic import write_run

    sizes = (2_000, 10_000) if quick else (10_000, 100_000)
    bench = Bench("B8", "hud-ray view on big runs",
                  "time to first paint (s) of the overview, cold",
                  f"overview of a 10,000-row run ≤ {TARGET_S:.0f} s",
                  params={"rows": list(sizes), "variants": 2})
    chromium = shutil.which("chromium")
    if chromium is None:
        bench.skipped = "Debian's chromium is not installed (apt-get install -y chromium)"
        return bench
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for n in sizes:
            run_dir = out / f"run{n}"
            shutil.rmtree(run_dir, ignore_errors=True)
            write_run(run_dir, n, variants=("A", "B"), tasks=n // 20)
            load0 = loadavg()
            m = results[n] = _measure(browser, run_dir, n)
            bench.rows.append(Row(f"viewer overview, {n:,} rows", m["overview_cold_s"], "s",
                                  ratio=m["report_s"] / m["overview_cold_s"],
                                  extra={k: round(v, 3) for k, v in m.items()},
                                  load=(load0, loadavg())))
            bench.rows.append(Row(f"viewer table, {n:,} rows", m["table_s"], "s",
                                  ratio=m["report_s"] / m["table_s"],
                                  metric="time to first paint (s) of the table, cold",
                                  note="first paint of the rollouts grid (count + first row)"))
            bench.rows.append(Row(f"viewer server RSS, {n:,} rows", m["rss_mib"], "MiB",
                                  metric="server RSS",
                                  note="after every page above and a scroll to the end"))
            bench.rows.append(Row(f"hud-ray report (baseline), {n:,} rows", m["report_s"], "s",
                                  metric="seconds to the same numbers in a terminal",
                                  note="the terminal report of the same run, process start "
                                       "included"))
        browser.close()
    small = results[sizes[0]]
    bench.met = small["overview_cold_s"] <= TARGET_S if not quick else None
    bench.verdict = "; ".join(
        f"{n:,} rows: overview {m['overview_cold_s']:.2f} s cold / {m['overview_warm_s']:.2f} s "
        f"warm, table {m['table_s']:.2f} s (filtered {m['table_filtered_s']:.2f} s), "
        f"RSS {m['rss_mib']:.0f} MiB; hud-ray report {m['report_s']:.2f} s"
        for n, m in results.items())
    return bench
