"""Workers kept across runs in one Ray session.

A worker actor costs a process start, imports and its provider's set-up (the local
provider's zygote imports the env; cloud providers open SDK clients): ≈ 1 s or more per
run. A notebook or a `ray job submit` driver that calls `run_distributed()` again and
again, or a long-lived RL rollout source, would pay it every time. At the end of a run
its clean workers come back here and the next run with the same provider configuration
takes them (`begin_run` gives a worker the new run's agent, run id, incarnation,
deadlines and warm depth; nothing of the old run survives — see `RolloutWorkerImpl`).

What a kept worker holds between runs: its process, its provider instance and the env
variables it was started with. Never a sandbox: warm sandboxes are freed at the end of
each run, because their names and labels carry the run id and incarnation that made
them (a resume of that run would reap them from under the next one, and their lifetime
was budgeted for that run's deadline).

Keyed by everything that makes one worker's sandboxes differ from another's: the
provider's name and options, the environment forwarded to it (credentials included,
as a digest — the key never holds a secret), and the Ray resources it was placed with.
Two runs with different keys never share a worker; two runs at once with the same key
each get their own (a worker is lent to one run at a time).

Driver-owned actors, not named detached ones: a detached actor outlives a dead driver
together with the credentials it was created with, and nothing would be left to end it
or its provider's processes; a driver-owned one dies with its driver within seconds
(Ray kills it; its sandboxes' reaping is the ledger's and leftovers' job, as for any
worker death). Sharing workers between drivers would also share credentials between
them. So the pool lives in the driver process: one per process, per Ray session.

A long-lived caller (an RL rollout source) either calls `run_distributed()` again and
again, or holds workers itself: `worker_pool().acquire(WorkerRequest(...), index)` for each,
the worker's `step`/`end_run` as the scheduler uses them, then `release([(worker_id,
clean)])` with `clean` from `end_run`'s reply (a worker it gave up on: `discard`).

Ended after `HUD_RAY_KEEP_WORKERS_S` seconds idle (default 300; 0 = end them at the end
of each run), by `hud_ray.shutdown()`, or at interpreter exit. At most `MAX_IDLE` idle
workers are kept (the oldest idle ones go first).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray

from hud_ray.preflight import keep_workers_s

log = logging.getLogger("hud_ray.pool")

MAX_IDLE = 16  # each idle worker is a process of ≈ 150 MB RSS
BEGIN_TIMEOUT_S = 10.0  # a live idle worker answers `begin_run` in milliseconds
END_TIMEOUT_S = 30.0  # an idle worker's `shutdown` closes only its provider


@dataclass(frozen=True)
class WorkerRequest:
    """What a run asks of a worker. The first four fields make up the pool key."""

    provider: str
    provider_options: dict[str, Any]
    env_vars: dict[str, str]
    resources: dict[str, float]
    max_concurrency: int
    run: tuple[Any, ...] = ()  # begin_run's arguments: agent, rollout config, slots, ...

    def key(self) -> str:
        """A digest: options and env vars may hold credentials, never kept as text."""
        blob = json.dumps([self.provider, self.provider_options, sorted(self.env_vars.items()),
                           sorted(self.resources.items())], sort_keys=True, default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class _Kept:
    actor: Any
    worker_id: str
    key: str
    generation: int
    idle_since: float = field(default_factory=time.monotonic)


class WorkerPool:
    """The driver's kept workers. Thread-safe: two runs may start at once."""

    def __init__(self, idle_timeout_s: float | None = None) -> None:
        self._idle_timeout_s = idle_timeout_s
        self._lock = threading.Lock()
        self._idle: list[_Kept] = []  # oldest first
        self._lent: dict[str, _Kept] = {}
        self._generation = 0  # bumped by shutdown(): workers lent before it are ended
        self._session: str | None = None
        self._wake = threading.Event()
        self._reaper: threading.Thread | None = None
        self.created = 0  # for tests and benches: workers started, workers reused
        self.reused = 0

    @property
    def idle_timeout_s(self) -> float:
        """Fixed by the constructor, else read from the environment at each use (a
        notebook may change it between runs)."""
        return keep_workers_s() if self._idle_timeout_s is None else self._idle_timeout_s

    # --- lending -----------------------------------------------------------------------
    def acquire(self, request: WorkerRequest, index: int) -> tuple[Any, str]:
        """A worker for `request` (actor handle, worker id): a kept one that answered
        `begin_run`, else a new one."""
        from hud_ray.worker import RolloutWorker

        key = request.key()
        while (kept := self._take_idle(key)) is not None:
            try:
                ray.get(kept.actor.begin_run.remote(*request.run), timeout=BEGIN_TIMEOUT_S)
            except Exception as exc:  # died while idle, or not clean: never lent again
                log.info("kept worker %s not reusable (%s: %s); ending it", kept.worker_id,
                         type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                _kill(kept.actor)
                continue
            with self._lock:
                kept.generation = self._generation
                self._lent[kept.worker_id] = kept
                self.reused += 1
            return kept.actor, kept.worker_id
        worker_id = f"w{index}-{uuid.uuid4().hex[:6]}"
        agent, rollout_config, slots, governor, warm_depth = request.run
        actor = RolloutWorker.options(
            name=None, scheduling_strategy="SPREAD", num_cpus=0, resources=request.resources,
            max_concurrency=request.max_concurrency,
        ).remote(worker_id, request.provider, request.provider_options, agent, rollout_config,
                 slots, request.env_vars, governor, warm_depth)
        with self._lock:
            self._lent[worker_id] = _Kept(actor, worker_id, key, self._generation)
            self.created += 1
        return actor, worker_id

    def _take_idle(self, key: str) -> _Kept | None:
        with self._lock:
            self._check_session()
            for i in range(len(self._idle) - 1, -1, -1):  # the most recently used first
                if self._idle[i].key == key:
                    return self._idle.pop(i)
        return None

    def _check_session(self) -> None:
        """Handles of an earlier Ray session (ray.shutdown, then ray.init) are dead."""
        session = ray.get_runtime_context().get_job_id()
        if session != self._session:
            self._session = session
            self._idle.clear()
            self._lent.clear()

    def release(self, returned: list[tuple[str, bool]]) -> None:
        """A run's workers come back: (worker id, clean). Clean ones are kept (unless
        keeping is off, or `shutdown()` ran while they were lent); the rest are ended."""
        to_end, to_kill = [], []
        keep_s = self.idle_timeout_s
        with self._lock:
            for worker_id, clean in returned:
                kept = self._lent.pop(worker_id, None)
                if kept is None:
                    continue
                if not clean:
                    to_kill.append(kept.actor)
                elif keep_s <= 0 or kept.generation != self._generation:
                    to_end.append(kept.actor)
                else:
                    kept.idle_since = time.monotonic()
                    self._idle.append(kept)
            while len(self._idle) > MAX_IDLE:
                to_end.append(self._idle.pop(0).actor)
            if self._idle:
                self._start_reaper()
        for actor in to_kill:
            _kill(actor)
        end_workers(to_end)

    def discard(self, worker_id: str) -> None:
        """A lent worker died or was killed mid-run: forget it (and make sure it is dead)."""
        with self._lock:
            kept = self._lent.pop(worker_id, None)
        if kept is not None:
            _kill(kept.actor)

    # --- ending ------------------------------------------------------------------------
    def shutdown(self) -> int:
        """End every idle worker now (their providers closed); workers lent to a run
        still going are ended when it returns them. Returns how many were ended."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        end_workers([k.actor for k in idle])
        return len(idle)

    def idle_count(self, key: str | None = None) -> int:
        with self._lock:
            return sum(1 for k in self._idle if key is None or k.key == key)

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap_idle, name="hud_ray-pool-reaper",
                                            daemon=True)
            self._reaper.start()
        self._wake.set()

    def _reap_idle(self) -> None:
        """End workers idle past the timeout; exits when none are left."""
        while True:
            self._wake.clear()
            now, keep_s = time.monotonic(), self.idle_timeout_s
            with self._lock:
                expired = [k for k in self._idle if now - k.idle_since >= keep_s]
                self._idle = [k for k in self._idle if k not in expired]
                nxt = min((k.idle_since for k in self._idle), default=None)
                if nxt is None and not expired:
                    self._reaper = None
                    return
            if expired:
                end_workers([k.actor for k in expired])
            if nxt is not None:
                self._wake.wait(max(0.01, nxt + keep_s - time.monotonic()))


def end_workers(actors: list[Any], timeout_s: float = END_TIMEOUT_S) -> None:
    """Close each worker's provider (`shutdown`), then kill it."""
    if not actors:
        return
    with contextlib.suppress(Exception):
        refs = [a.shutdown.remote() for a in actors]
        if ray.is_initialized():  # never start a Ray just to end actors (it would be empty)
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for actor in actors:
        _kill(actor)


def _kill(actor: Any) -> None:
    if ray.is_initialized():
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def worker_pool() -> WorkerPool:
    """This driver's pool (created on first use; ended at interpreter exit)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool()
            # Registered after ray.init (the first run's): atexit runs it before Ray's own.
            atexit.register(_at_exit)
        return _POOL


def shutdown() -> int:
    """End the workers kept for later runs in this process (and their providers'
    processes, e.g. the local provider's zygotes). Ray itself keeps running. Returns how
    many workers were ended; safe to call at any time."""
    if _POOL is None or not ray.is_initialized():
        return 0
    return _POOL.shutdown()


def _at_exit() -> None:
    with contextlib.suppress(Exception):
        shutdown()
