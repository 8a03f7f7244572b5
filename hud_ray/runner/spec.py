"""A rollout's settings, and what its sandbox is asked for: spec, name and labels."""

from __future__ import annotations

from pydantic import BaseModel

from hud_ray.tasks import Rollout
from providers import (
    LABEL_DRIVER,
    LABEL_INCARNATION,
    LABEL_OWNER,
    LABEL_ROLLOUT,
    LABEL_RUN,
    LABEL_WORKER,
    Endpoint,
    SandboxHandle,
    SandboxSpec,
    sandbox_name,
)


class RolloutConfig(BaseModel):
    run_id: str = "adhoc"
    incarnation: str = ""  # this driver start of the run (hud_ray.incarnation)
    driver: str = ""  # the driver's host:pid:start-time, so a later one can prove it dead
    owner: str = "hud-ray"
    deadline_s: float = 600.0
    ready_timeout_s: float = 120.0
    throttle_timeout_s: float = 600.0  # longest wait for a create grant (then quota_error)
    cancel_timeout_s: float = 5.0
    teardown_timeout_s: float = 60.0
    # Longest pause a sandbox's hard lifetime is budgeted for (an RL rollout source's
    # weight updates: hud_ray.deadline_hold stops the deadline, not a provider's cap).
    pause_budget_s: float = 0.0
    heartbeat_s: float | None = 120.0
    attempt: int = 1
    worker_id: str | None = None
    node_id: str | None = None
    keep_raw: bool = False  # raw model responses in steps (off: they dominate the bytes)
    prices: dict[str, dict[str, float]] = {}  # $/1M tokens by model, over the defaults


class Prepared(BaseModel):
    """A sandbox provisioned ahead of its rollout (warm-ahead): created and ready."""

    model_config = {"arbitrary_types_allowed": True}
    handle: SandboxHandle
    endpoint: Endpoint
    created_at: float  # time.monotonic() when its create began (for sandbox_seconds)


WARM_ROLLOUT_LABEL = "(warm)"  # the rollout label of a sandbox warmed ahead of its rollout


def rollout_labels(config: RolloutConfig, rollout_key: str) -> dict[str, str]:
    labels = {LABEL_RUN: config.run_id, LABEL_ROLLOUT: rollout_key, LABEL_OWNER: config.owner}
    if config.incarnation:
        labels[LABEL_INCARNATION] = config.incarnation
    if config.driver:
        labels[LABEL_DRIVER] = config.driver
    return labels


def warm_labels(config: RolloutConfig, worker_id: str) -> dict[str, str]:
    """A warm sandbox has no rollout yet (and keeps these labels once one claims it): the
    worker that made it is how a reaper finds it after that worker dies."""
    return {**rollout_labels(config, WARM_ROLLOUT_LABEL), LABEL_WORKER: worker_id}


def sandbox_spec(rollout: Rollout, config: RolloutConfig, deadline_s: float) -> SandboxSpec:
    runtime = rollout.task.runtime_config
    limits = runtime.limits if runtime else None
    return SandboxSpec(
        name=sandbox_name(config.run_id, rollout.rollout_key, config.attempt, config.incarnation),
        image=runtime.image if runtime else None,
        compose=runtime.compose if runtime else None,
        env_name=rollout.task.env_name,
        resources=runtime.resources if runtime else None,
        lifetime_s=deadline_s + config.pause_budget_s + config.teardown_timeout_s,
        startup_timeout_s=(limits.startup_timeout_s if limits and limits.startup_timeout_s
                           else config.ready_timeout_s),
    )
