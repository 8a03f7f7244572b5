"""Real runs, a real `hud-ray view` process and Debian's chromium for the viewer's tests.

Two runs through `hud-ray run` on the local provider (the demo tasks, an agent that records
model turns and tool calls: tests/view/agent.py), A solving arithmetic and B refusing it,
plus one synthetic two-variant run written through hud_ray's own writer. Screenshots of
every page land in build/view-screenshots/ (or $HUD_RAY_VIEW_SHOTS).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_TASKS = REPO / "examples" / "demo" / "tasks.jsonl"
AGENT = Path(__file__).with_name("agent.py")
SHOTS = Path(os.environ.get("HUD_RAY_VIEW_SHOTS", REPO / "build" / "view-screenshots"))


def hud_ray(*args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "hud_ray.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"hud-ray {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hud_ray.view.synthetic import write_run

    root = tmp_path_factory.mktemp("view-runs")
    for run_id, agent in (("ra", "agent_a"), ("rb", "agent_b")):
        hud_ray("run", str(DEMO_TASKS), "--agent", f"{AGENT}:{agent}", "--out", str(root),
                "--run-id", run_id, "--concurrency", "8", "--no-progress")
    write_run(root / "syn", 2000, variants=("A", "B"), tasks=200)
    return root


class Viewer:
    """A `hud-ray view` process and the URL it printed."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen([sys.executable, "-m", "hud_ray.cli", "view", *args],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()  # blocks until it serves (or dies)
        match = re.search(r"(http://\S+)", line)
        if not match:
            self.stop()
            raise AssertionError(f"hud-ray view did not start: {line!r} "
                                 f"{self.proc.stderr.read()[-2000:]}")
        self.url = match.group(1)

    @property
    def base(self) -> str:
        return self.url.split("?")[0].rstrip("/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def viewer(runs_dir: Path) -> Iterator[Viewer]:
    server = Viewer(str(runs_dir), "--port", "0")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; "
                    ".ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_page(page: object, url: str, shot: str | None = None) -> None:
    """Go to `url` and wait until the app says the view is drawn; keep a screenshot."""
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    if shot:
        screenshot(page, shot)


def screenshot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
