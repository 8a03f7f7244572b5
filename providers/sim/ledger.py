"""The sim account's books, shared by every process on the host through the state dir.

    <state_dir>/<account>/events-<host>-<pid>-<tag>.jsonl   one append-only log per provider
    <state_dir>/<account>/quota.bin                          token bucket + live count (mmap)

Each provider instance appends to its own log, so writers never interleave and a reader
needs no lock. A destroy is written before `destroy()` returns, as a cloud's delete is
done once it answers: a reaper told "destroyed" must find it so in the books. Other events
are buffered and written with the first event `flush_s` after the last write (and on list,
close, `sim_stats` and interpreter exit): a create then costs a list append, not a syscall.
A process killed with SIGKILL loses its buffered creates from the books (the quota file's
live count, taken at create, stays taken: see `AccountQuota`).

Sandboxes belong to the account, not the process (like a cloud's): one that was created
and never destroyed stays live in the books until some process destroys it — which is
what lets a reaper clean up after a killed worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import secrets
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any


def default_root() -> Path:
    base = os.environ.get("HUD_RAY_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "hud_ray"
    )
    return Path(base) / "sim"


def account_dir(account: str, state_dir: str | os.PathLike[str] | None = None) -> Path:
    return (Path(state_dir) if state_dir else default_root()) / account


class EventLog:
    """Buffered writer of one provider instance's events (create, destroy, quota, fail)."""

    def __init__(self, directory: Path, flush_s: float) -> None:
        self.directory = directory
        self.flush_s = flush_s
        tag = secrets.token_hex(3)
        self.path = directory / f"events-{socket.gethostname()}-{os.getpid()}-{tag}.jsonl"
        # Raw tuples; JSON is built at flush time so the hot path is one append.
        self._buf: list[tuple[Any, ...]] = []
        self._next_flush = time.monotonic() + flush_s
        self._file: Any = None
        # The scheduler reaps from a thread of its own while the main thread may flush.
        self._lock = threading.Lock()

    def add(self, event: tuple[Any, ...], durable: bool = False) -> None:
        with self._lock:
            self._buf.append(event)
        if durable or self.flush_s == 0 or time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._next_flush = time.monotonic() + self.flush_s
            if not self._buf:
                return
            buf, self._buf = self._buf, []
            if self._file is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # one append stream
            self._file.write("".join(map(_line, buf)))
            self._file.flush()

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _line(event: tuple[Any, ...]) -> str:
    kind, t, sandbox_id = event[0], event[1], event[2]
    if kind == "d":  # the most common line; ids are "sim-<hex>", safe to format
        return f'{{"e":"d","t":{t!r},"id":"{sandbox_id}"}}\n'
    row: dict[str, Any] = {"e": kind, "t": t, "id": sandbox_id}
    if kind == "c":
        row["name"], row["labels"] = event[3], event[4]
    elif len(event) > 3:
        row["why"] = event[3]
    return _dumps(row) + "\n"


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every event of the account, oldest first (creates before destroys at equal times)."""
    events: list[dict[str, Any]] = []
    if not directory.is_dir():
        return events
    for path in directory.glob("events-*.jsonl"):
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill in mid-write
                if isinstance(row, dict) and "e" in row and "t" in row:
                    events.append(row)
    events.sort(key=lambda r: (r["t"], r["e"] != "c"))
    return events


def live_sandboxes(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """sandbox id → its create event, for every sandbox created and not yet destroyed."""
    live: dict[str, dict[str, Any]] = {}
    for row in events:
        if row["e"] == "c":
            live[row["id"]] = row
        elif row["e"] == "d":
            live.pop(row["id"], None)
    return live


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    live: set[str] = set()
    peak = creates = destroys = quota = failures = 0
    create_times: list[float] = []
    for row in events:
        kind = row["e"]
        if kind == "c":
            creates += 1
            create_times.append(row["t"])
            live.add(row["id"])
            peak = max(peak, len(live))
        elif kind == "d":
            if row["id"] in live:
                live.discard(row["id"])
                destroys += 1
        elif kind == "q":
            quota += 1
        elif kind == "f":
            failures += 1
    return {
        "live": len(live),
        "creates": creates,
        "destroys": destroys,
        "peak_live": peak,
        "max_creates_per_s": max_in_window(create_times, 1.0),
        "quota_errors": quota,
        "create_failures": failures,
        "first_create_at": create_times[0] if create_times else None,
        "last_create_at": create_times[-1] if create_times else None,
    }


def max_in_window(times: list[float], window_s: float) -> int:
    """Most timestamps (sorted) inside any half-open window [t, t + window_s)."""
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class AccountQuota:
    """Token bucket and live count in a 64-byte mmap'd file, updated under flock.

    Shared by every process using the account on this host, at ≈ 2 µs per create. The
    live count is approximate: after a SIGKILL (the killed process cannot decrement it)
    until a reaper destroys the orphans, and one too low if an owner destroys a sandbox a
    reaper already destroyed (never below zero).
    """

    _STATE = struct.Struct("<ddq")  # tokens, wall time of that token count, live sandboxes

    def __init__(self, directory: Path, live_cap: int | None, rate: float | None,
                 burst: float | None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.live_cap = live_cap
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate or 1.0)
        self._fd = os.open(directory / "quota.bin", os.O_RDWR | os.O_CREAT, 0o644)
        with self._locked():
            if os.fstat(self._fd).st_size < 64:
                os.ftruncate(self._fd, 64)  # zeros = a full bucket, nothing live
        self._map = mmap.mmap(self._fd, 64)

    @contextlib.contextmanager
    def _locked(self) -> Any:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def acquire(self) -> tuple[str, float] | None:
        """Take one create; None if allowed, else (reason, retry_after_s)."""
        now = time.time()
        with self._locked():
            tokens, at, live = self._STATE.unpack_from(self._map)
            if self.live_cap is not None and live >= self.live_cap:
                return f"live_cap={self.live_cap} reached ({live} live)", 1.0
            if self.rate is not None:
                tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
                if tokens < 1.0:
                    self._STATE.pack_into(self._map, 0, tokens, now, live)
                    return f"create_rate={self.rate}/s exceeded", (1.0 - tokens) / self.rate
                tokens -= 1.0
            self._STATE.pack_into(self._map, 0, tokens, now, live + 1)
        return None

    def release(self) -> None:
        with self._locked():
            tokens, at, live = self._STATE.unpack_from(self._map)
            self._STATE.pack_into(self._map, 0, tokens, at, max(0, live - 1))

    def live(self) -> int:
        with self._locked():
            return self._STATE.unpack_from(self._map)[2]

    def close(self) -> None:
        if self._fd < 0:
            return  # closing twice must not close a reused descriptor number
        with contextlib.suppress(Exception):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1
