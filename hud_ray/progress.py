"""Live progress: done/total, ok/failed, mean reward, rate, ETA.

A rich progress bar on a terminal or in Jupyter; one plain line every few seconds when
output is a pipe or a log (CI, `ray job submit`), so logs stay readable.

The rate is the recent one (rollouts finished in the last `RATE_WINDOW_S`), so it follows
a run that speeds up or slows down; there is no rate, and so no ETA, until it means
something: at least `MIN_ROWS_FOR_RATE` rows over at least `MIN_SPAN_S` seconds (the first
row after Ray's start-up says nothing about the run's pace).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any

RATE_WINDOW_S = 30.0
MIN_ROWS_FOR_RATE = 10
MIN_SPAN_S = 2.0


class Progress:
    def __init__(self, total: int | None, *, enabled: bool = True, every_s: float = 5.0,
                 already_done: int = 0) -> None:
        self.total = total
        self.enabled = enabled
        self.every_s = every_s
        self.done = already_done
        self.ok = 0
        self.failed = 0
        self.reward_sum = 0.0
        self.graded = 0
        self._finished_at: deque[float] = deque()  # this run's recent completions
        self._last_print = 0.0
        self._bar: Any = None
        self._task: Any = None
        if enabled and _interactive():
            self._start_rich()

    def _start_rich(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]rollouts"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            refresh_per_second=4,
        )
        self._task = self._bar.add_task("run", total=self.total, completed=self.done,
                                        stats=self.stats(), eta=self.eta())
        self._bar.start()

    def stats(self) -> str:
        mean = f"{self.reward_sum / self.graded:.3f}" if self.graded else "-"
        rate = self.rate()
        shown = f"{rate:.1f}/s" if rate is not None else "-/s"
        return f"ok {self.ok} · failed {self.failed} · reward {mean} · {shown}"

    def rate(self) -> float | None:
        """Rollouts/s over the last RATE_WINDOW_S; None until it means something."""
        window = self._finished_at
        now = time.monotonic()
        while window and now - window[0] > RATE_WINDOW_S:
            window.popleft()
        if len(window) < MIN_ROWS_FOR_RATE or now - window[0] < MIN_SPAN_S:
            return None
        return len(window) / (now - window[0])

    def eta(self) -> str:
        rate = self.rate()
        if not self.total or rate is None or rate <= 0:
            return ""
        return f"eta {max(0, self.total - self.done) / rate:.0f}s"

    def update(self, row: dict[str, Any]) -> None:
        self.done += 1
        self._finished_at.append(time.monotonic())
        if row["status"] == "ok":
            self.ok += 1
        else:
            self.failed += 1
        if row.get("reward") is not None:
            self.reward_sum += row["reward"]
            self.graded += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, stats=self.stats(),
                             eta=self.eta())
        elif time.monotonic() - self._last_print >= self.every_s:
            self._last_print = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        total = f"/{self.total}" if self.total else ""
        eta = self.eta()
        return f"[hud-ray] {self.done}{total} done · {self.stats()}{' · ' + eta if eta else ''}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()  # Live.stop() skips the last refresh in Jupyter
            self._bar.stop()
            self._bar = None
        elif self.enabled:
            print(self.line(), file=sys.stderr, flush=True)


def _interactive() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]

        if get_ipython() is not None:
            return True
    except ImportError:
        pass
    return sys.stderr.isatty()
