"""A run's incarnation: one driver start of a run id.

A run id names results (`runs/<run_id>/`); each driver that starts or resumes it is a new
*incarnation* (a fresh nonce). Governor marks, ledger entries, sandbox names and labels,
and Parquet part names carry it, so "finished", "orphan" and "whose part" always mean one
driver start — a run id re-used in one Ray session never reaps its own sandboxes, and a
resume can destroy exactly what its predecessors left.

The driver's identity (`host:pid:start-time`) travels with it: a later driver on the same
host can *prove* an earlier one dead (its pid is gone, or now belongs to a process that
started at another time). On another host nothing can be proved; callers then say so.
"""

from __future__ import annotations

import os
import secrets
import socket


def new_incarnation() -> str:
    """A fresh nonce: 8 hex digits (collisions within one run id are negligible)."""
    return secrets.token_hex(4)


def driver_identity(pid: int | None = None) -> str:
    """`host:pid:start-time` of this process (or `pid` on this host)."""
    pid = os.getpid() if pid is None else pid
    started = _create_time(pid)
    return f"{socket.gethostname()}:{pid}:{started or 0:.2f}"


def driver_alive(identity: str) -> bool | None:
    """True/False when provable on this host; None when it cannot be known (another host,
    a malformed identity)."""
    try:
        host, pid_text, started_text = identity.rsplit(":", 2)
        pid, started = int(pid_text), float(started_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    created = _create_time(pid)
    if created is None:
        return False
    # A recycled pid is another process: its start time differs from the recorded one.
    return not started or abs(created - started) < 0.05


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
