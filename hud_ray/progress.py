"""Live progress: done/total, ok/failed, mean reward, rate, ETA.

A rich progress bar on a terminal or in Jupyter; one plain line every few seconds when
output is a pipe or a log (CI, `ray job submit`), so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any


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
        self._t0 = time.monotonic()
        self._new = 0
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
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]rollouts"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            refresh_per_second=4,
        )
        self._task = self._bar.add_task("run", total=self.total, completed=self.done,
                                        stats=self.stats())
        self._bar.start()

    def stats(self) -> str:
        mean = f"{self.reward_sum / self.graded:.3f}" if self.graded else "-"
        return (f"ok {self.ok} · failed {self.failed} · reward {mean} · "
                f"{self.rate():.1f}/s")

    def rate(self) -> float:
        elapsed = time.monotonic() - self._t0
        return self._new / elapsed if elapsed > 0 else 0.0

    def update(self, row: dict[str, Any]) -> None:
        self.done += 1
        self._new += 1
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
            self._bar.update(self._task, completed=self.done, stats=self.stats())
        elif time.monotonic() - self._last_print >= self.every_s:
            self._last_print = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and self.rate() > 0:
            eta = f" · eta {max(0, self.total - self.done) / self.rate():.0f}s"
        return f"[hud-ray] {self.done}{total} done · {self.stats()}{eta}"

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
