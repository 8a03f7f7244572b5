"""Which process owns a container, and whether it is still alive.

dockerd's live-restore is off here and a killed driver or worker leaves its containers
running. Every container carries its creator's host name, PID and PID start time (so a
recycled PID is never mistaken for the owner); when a provider first creates in a process
it removes containers on this host whose owner is gone. Containers of other hosts are never
touched: their owners cannot be checked from here (`hud-ray reap` removes them by run id).
"""

from __future__ import annotations

import os
import socket

LABEL_HOST = "hud-ray-docker-host"
LABEL_PID = "hud-ray-docker-pid"
LABEL_PID_START = "hud-ray-docker-pid-start"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5)


def owner_labels() -> dict[str, str]:
    pid = os.getpid()
    return {LABEL_HOST: socket.gethostname(), LABEL_PID: str(pid),
            LABEL_PID_START: process_start(pid) or ""}


def owner_is_dead(labels: dict[str, str]) -> bool:
    """True only when the owner is provably gone: on this host, and its PID is dead or
    now names another process."""
    if labels.get(LABEL_HOST) != socket.gethostname():
        return False
    pid = labels.get(LABEL_PID, "")
    if not pid.isdigit():
        return False
    started = process_start(int(pid))
    if started is None:
        return True
    recorded = labels.get(LABEL_PID_START)
    return bool(recorded) and recorded != started
