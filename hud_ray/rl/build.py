"""Build the live scheduler of a rollout source: the same checks and pieces as
`hud_ray.api.plan_run`, minus the task file (the trainer is the task source)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hud_ray import preflight
from hud_ray.agents import agent_name, resolve_agent
from hud_ray.agents.config import configure_agent, redacted_config
from hud_ray.api import (
    FORWARDED_ENV,
    agent_env_names,
    ensure_ray,
    governor_settings,
    new_run_id,
)
from hud_ray.llm_governor import check_llm_limits
from hud_ray.redact import install_log_scrubber, redacted, run_scrubber
from hud_ray.results import ResultWriter
from providers import get_provider


def build_scheduler(agent: Any, provider: str, feed: Any, *, out: str | Path,
                    run_id: str | None, resume: bool, concurrency: int,
                    workers: int | None, timeout_s: float, max_attempts: int,
                    flush_s: float, governor: Any, warm: float | None,
                    provider_options: dict[str, Any], agent_config: dict[str, Any] | None,
                    llm_limits: dict[str, Any] | None, step_wait_s: float,
                    retry_backoff_s: float) -> tuple[Any, Path]:
    """Validate the settings, open the run directory, return (LiveScheduler, run_dir)."""
    preflight.check_settings(
        concurrency=concurrency, repeats=1, workers=workers, timeout_s=timeout_s,
        ready_timeout_s=min(120.0, timeout_s), max_attempts=max_attempts, max_failures=None,
        max_failure_fraction=None, warm=warm)
    preflight.check_governor(governor)
    agent_spec = agent
    agent = configure_agent(agent, agent_config, check_llm_limits(llm_limits))
    resolve_agent(agent)
    driver_provider = get_provider(provider, **provider_options)
    driver_provider.check_config()
    driver_provider.check_credentials()
    if resume and not run_id:
        raise ValueError("resume=True needs run_id (the run to continue)")
    preflight.check_resume(out, run_id, resume)
    run_id = run_id or new_run_id()
    run_dir = Path(out) / run_id
    config = {
        "tasks": "<rl rollout source>",
        "agent": agent_spec if isinstance(agent_spec, str) else agent_name(agent),
        "agent_config": redacted_config(agent_config), "llm_limits": llm_limits,
        "provider": provider, "provider_options": redacted(provider_options),
        "concurrency": concurrency, "timeout_s": timeout_s, "max_attempts": max_attempts,
        "repeats": 1, "variant": None,
    }
    from hud_ray.rl.live import LiveScheduler  # imports Ray: after the checks
    from hud_ray.scheduler import SchedulerConfig

    env_vars = {k: os.environ[k] for k in (*FORWARDED_ENV, *agent_env_names(agent_config))
                if k in os.environ}
    scrubber = run_scrubber(provider_options, env_vars)
    install_log_scrubber(scrubber)
    writer = ResultWriter(run_dir, config=config, resume=resume, flush_s=flush_s,
                          scrubber=scrubber)
    sched_config = SchedulerConfig(
        run_id=run_id, provider=provider, provider_options=provider_options, agent=agent,
        concurrency=concurrency, workers=workers, max_attempts=max_attempts,
        retry_backoff_s=retry_backoff_s, step_wait_s=step_wait_s,
        rollout={"deadline_s": timeout_s, "ready_timeout_s": min(120.0, timeout_s)},
        env_vars=env_vars, governor=governor_settings(governor), resume=resume,
        warm_per_slot=(warm if warm is not None
                       else (1.0 if driver_provider.capabilities.warm_ahead else 0.0)),
    )
    ensure_ray()
    scheduler = LiveScheduler(sched_config, iter(()), writer, driver_provider, feed=feed)
    return scheduler, run_dir
