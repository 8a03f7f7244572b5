"""What every benchmark shares: the machine, Ray, timing, the result record, the table.

A benchmark returns a `Bench`: its contender rows (hud_ray first, then the baselines and
reference rows), the target, and whether hud_ray met it. Absolute numbers on a shared
2-core machine are noisy; every row also records the load average around it, so a
reader can tell a quiet run from a contended one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"


@dataclass
class Row:
    """One contender's measurement. `value` is the benchmark's primary metric."""

    contender: str
    value: float | None
    unit: str
    ratio: float | None = None  # hud_ray's advantage over this row (set by the benchmark)
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    load: tuple[float, float] | None = None  # 1-min load average before / after
    metric: str | None = None  # this row's own metric, where it is not the benchmark's


@dataclass
class Bench:
    id: str
    title: str
    metric: str
    target: str
    rows: list[Row] = field(default_factory=list)
    met: bool | None = None
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    skipped: str | None = None

    def row(self, contender: str) -> Row | None:
        return next((r for r in self.rows if r.contender == contender), None)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


@contextlib.contextmanager
def measured(row_extra: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Wall clock, driver CPU (process_time) and load average around a block."""
    load0 = loadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    box: dict[str, Any] = {}
    try:
        yield box
    finally:
        box["wall_s"] = time.perf_counter() - t0
        box["driver_cpu_s"] = time.process_time() - c0
        box["load"] = (load0, loadavg())
        row_extra.update({k: v for k, v in box.items() if k != "load"})


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE → hard. Ray workers inherit limits from the raylet, which
    inherits them from this process when it starts Ray: call before `ray.init`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def start_ray() -> None:
    """One local Ray for the whole bench (no dashboard), as a user's notebook would have."""
    import ray

    if ray.is_initialized():
        return
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False,
             num_cpus=os.cpu_count() or 2)


def ray_worker_processes() -> list[Any]:
    """The Ray worker processes (`ray::…`) of OUR local Ray: descendants of this process
    (other Ray clusters on the machine are someone else's)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = proc.cmdline()
            if cmd and cmd[0].startswith("ray::"):
                proc.info = {"cmdline": cmd}
                found.append(proc)
    return found


class CpuMeter:
    """CPU seconds used by this process and all its descendants (Ray's workers, raylet,
    GCS, subprocesses) over a window: sampled every `every_s`, so processes that come and
    go inside the window are counted up to their last sample."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self._first: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._poller = Poller(self._sample, every_s)
        self.own_s = 0.0
        self.children_s = 0.0
        self._started = False

    def _sample(self) -> bool:
        import psutil

        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                key = (proc.pid, proc.create_time())
                t = proc.cpu_times()
                used = t.user + t.system
                self._first.setdefault(key, used if self._started else 0.0)
                self._last[key] = used
        return False

    def __enter__(self) -> CpuMeter:
        self._started = True
        self._sample()
        self._started = False  # processes first seen from now on started inside the window
        self._own0 = time.process_time()
        self._poller.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._poller.__exit__(*exc)
        self._sample()
        self.own_s = time.process_time() - self._own0
        self.children_s = sum(self._last[k] - self._first[k] for k in self._last)

    @property
    def total_s(self) -> float:
        return self.own_s + self.children_s


def uss_bytes(procs: list[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for proc in procs:
        with contextlib.suppress(Exception):
            out[proc.pid] = proc.memory_full_info().uss
    return out


def machine() -> dict[str, Any]:
    import psutil
    import pyarrow
    import ray

    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "hud_ray",
                      "providers"))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "platform": platform.platform(),
        "commit": commit + ("+dirty(hud_ray/providers)" if dirty else ""),
        "rlimit_nofile": list(nofile),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_pressure_at_start": cpu_pressure(),
    }


def cpu_pressure() -> str:
    """Linux PSI: share of time some runnable task waited for a CPU (a busy neighbour)."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "n/a"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class Poller:
    """Calls `fn` every `every_s` in a thread until stopped (file watchers, samplers)."""

    def __init__(self, fn: Callable[[], bool | None], every_s: float = 0.01) -> None:
        self.fn = fn
        self.every_s = every_s
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.fn():
                    return
            except BaseException as exc:  # surfaced by the caller, never swallowed
                self.error = exc
                return
            self._stop.wait(self.every_s)


def first_file_at(directory: Path, pattern: str = "*.parquet") -> Callable[[], float | None]:
    """A poll function recording when the first file matching `pattern` appears."""
    seen: dict[str, float] = {}

    def poll() -> bool:
        if directory.exists() and any(directory.rglob(pattern)):
            seen["t"] = time.perf_counter()
            return True
        return False

    poll.seen = seen  # type: ignore[attr-defined]
    return poll  # type: ignore[return-value]


# --- output ------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def table_lines(benches: list[Bench]) -> list[str]:
    lines = ["| bench | contender | metric | value | hud_ray advantage | notes |",
             "|---|---|---|---|---|---|"]
    for b in benches:
        if b.skipped:
            lines.append(f"| {b.id} | — | {b.metric} | skipped | — | {b.skipped} |")
            continue
        for r in b.rows:
            value = f"{fmt(r.value)} {r.unit}".strip() if r.value is not None else "—"
            ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
            lines.append(f"| {b.id} | {r.contender} | {r.metric or b.metric} | {value} | {ratio} | "
                         f"{r.note} |")
    return lines


def verdict_lines(benches: list[Bench]) -> list[str]:
    out = []
    for b in benches:
        if b.skipped:
            out.append(f"- **{b.id}** {b.title}: skipped — {b.skipped}")
            continue
        mark = {True: "MET", False: "MISSED", None: "n/a"}[b.met]
        out.append(f"- **{b.id}** {b.title} — target {b.target}: **{mark}**. {b.verdict}")
        out.extend(f"  - {n}" for n in b.notes)
    return out


def write_results(benches: list[Bench], info: dict[str, Any], command: str,
                  out: Path = OUT) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "machine": info,
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "benchmarks": [asdict(b) for b in benches]}
    json_path = out / "results.json"
    json_path.write_text(json.dumps(data, indent=2, default=str))
    md = ["# hud_ray benchmarks", "",
          f"Command: `{command}`", "",
          "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), "",
          *table_lines(benches), "", "## Targets", "", *verdict_lines(benches), "",
          "## Details", ""]
    for b in benches:
        if b.skipped:
            continue
        md.append(f"### {b.id} — {b.title} ({b.wall_s:.0f} s)")
        md.append("")
        md.append("Parameters: " + ", ".join(f"{k}={v}" for k, v in b.params.items()))
        md.append("")
        for r in b.rows:
            extra = ", ".join(f"{k}={fmt(v, 4)}" for k, v in r.extra.items())
            load = f" load {r.load[0]}→{r.load[1]}" if r.load else ""
            md.append(f"- {r.contender}: {extra}{load}")
        md.append("")
    md_path = out / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    return json_path, md_path


def python_command() -> str:
    return " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]])
