"""What the driver knows of work it handed out: each rollout in flight (when, with what
budget, last phase reported) and each worker; the row written for a rollout whose worker
is gone; and the background reaper for what such a worker left behind."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hud_ray.schema import Status
from hud_ray.tasks import Rollout, task_fingerprint
from providers import LABEL_RUN, LABEL_SANDBOX, get_provider, sandbox_name

log = logging.getLogger("hud_ray.scheduler")


@dataclass
class Flight:
    """A rollout handed to a worker: when, with what deadline, when its deadline clock
    started (wall time, at the grant: reported by the worker), last phase it reported."""

    rollout: Rollout
    attempt: int
    sent_at: float  # monotonic
    deadline_s: float
    sent_wall: float = field(default_factory=time.time)
    clock_at: float | None = None
    phase: str = "provision"


@dataclass
class WorkerSlot:
    index: int
    actor: Any
    slots: int
    worker_id: str
    inflight: dict[str, Flight] = field(default_factory=dict)
    step_ref: Any = None
    drained: bool = False
    warm: dict[str, int] = field(default_factory=dict)
    next_probe: float = 0.0  # wall time: no watch probe before then
    step_sent: float = 0.0  # monotonic: when the `step` call in flight was sent


def failure_row(flight: Flight, config: Any, status: Status,
                 message: str) -> dict[str, Any]:
    """The row for a rollout whose worker is gone (it cannot write its own)."""
    from hud_ray.agents import agent_name
    from hud_ray.schema import RolloutResult, utcnow

    rollout, task = flight.rollout, flight.rollout.task
    timed_out = status is Status.TIMEOUT
    return RolloutResult(
        run_id=config.run_id, rollout_key=rollout.rollout_key, slug=task.slug or "",
        env=task.env_name, template_id=task.id, args=task.args,
        task_fingerprint=task_fingerprint(task), group_id=rollout.group_id,
        repeat=rollout.repeat, variant=rollout.variant,
        agent=agent_name(config.agent.get(rollout.variant, "")
                         if isinstance(config.agent, dict) else config.agent),
        provider=config.provider, status=status,
        timeout_phase=flight.phase if timed_out else None,
        error_type="DeadlineExceeded" if timed_out else "WorkerDied",
        error_message=message, attempts=flight.attempt, columns=task.columns,
        finished_at=utcnow(), total_s=time.monotonic() - flight.sent_at,
    ).to_row()


def lost_sandbox_labels(run_id: str, rollout_key: str, attempt: int,
                        incarnation: str) -> dict[str, str]:
    """Labels that find exactly one lost attempt's sandbox (this incarnation, this attempt):
    a slow reap after a worker death must never find the live retry's sandbox."""
    return {LABEL_RUN: run_id,
            LABEL_SANDBOX: sandbox_name(run_id, rollout_key, attempt, incarnation)}


def reap_in_background(provider_name: str, options: dict[str, Any],
                       labels: list[dict[str, str]]) -> threading.Thread:
    """Destroy sandboxes by labels in a thread (the driver's loop must not wait on it)."""

    async def go() -> None:
        # A provider of its own: SDK clients belong to the loop that made them.
        provider = get_provider(provider_name, **options)
        try:
            for label in labels:
                try:
                    await provider.reap(label)
                except Exception as exc:  # `hud-ray reap` can finish the job later
                    log.warning("reap %s failed: %s", label, exc)
        finally:
            await provider.close()

    thread = threading.Thread(target=lambda: asyncio.run(go()), name="hud-ray-reap",
                              daemon=True)
    thread.start()
    return thread
