"""One writer per run directory.

A driver that writes `runs/<run_id>/` holds an exclusive `flock` on `writer.lock` in it
for as long as it writes, and records its identity there (host, pid, incarnation, since).
The kernel drops the lock when the holder dies, however it dies (kill -9 included), so a
lock is taken over only from an owner proved dead; a second driver on a live run is refused
with one line naming the owner. (`flock` on NFS is emulated with POSIX locks by Linux; a
shared directory on a filesystem without locks is not supported.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("hud_ray.results")
LOCK_FILE = "writer.lock"


class RunLockedError(RuntimeError):
    """Another live driver writes this run directory."""


class RunLock:
    def __init__(self, run_dir: Path, incarnation: str) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.incarnation = incarnation
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunLockedError naming its live owner."""
        file = self.path.open("a+")  # never truncate before we hold it: the owner's words
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe(_read_owner(file))
            file.close()
            raise RunLockedError(
                f"{self.path.parent} is being written by another driver ({owner}); wait "
                "for it to finish, stop it, or use another --run-id") from None
        previous = _read_owner(file)
        if previous and previous.get("state") != "released":
            # Its holder died without releasing (kill -9, a lost machine): the kernel
            # freed the lock, which proves it gone.
            log.warning("run directory %s: taking over from a dead driver (%s)",
                        self.path.parent, _describe(previous))
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                               "incarnation": self.incarnation, "since": time.time(),
                               "state": "held"}))
        file.flush()
        self._file = file

    def release(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        with contextlib.suppress(OSError):
            file.seek(0)
            owner = _read_owner(file)
            file.seek(0)
            file.truncate()
            file.write(json.dumps({**owner, "state": "released"}))
            file.flush()
        file.close()  # closing drops the flock

    @property
    def held(self) -> bool:
        return self._file is not None


def _read_owner(file: IO[str]) -> dict[str, Any]:
    file.seek(0)
    try:
        owner = json.loads(file.read() or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "owner unknown"
    since = owner.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return (f"pid {owner.get('pid')} on {owner.get('host')}, incarnation "
            f"{owner.get('incarnation')}, since {when}")
