"""Plan-time checks: every bad input a run can know about before Ray starts.

`plan_run` calls these before it touches the run directory or starts Ray, so a bad
setting, a bad task file or a task the provider cannot honour ends in one message naming
it — and an existing run directory (resume) is left exactly as it was.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hud_ray.rollout import RolloutConfig, sandbox_spec
from hud_ray.tasks import Rollout, iter_rows, tasks_from
from hud_ray.warm import spec_key
from providers import Provider, ProviderConfigError, UnsupportedSpecError

# Rows validated at plan time (~40 µs each: a few seconds). Rows past this are still
# validated as they stream; a bad one there stops the run naming its line.
PRESCAN_ROWS = 200_000


def check_settings(
    *, concurrency: Any, repeats: Any, workers: Any, timeout_s: Any, ready_timeout_s: Any,
    max_attempts: Any, max_failures: Any, max_failure_fraction: Any, warm: Any,
    throttle_timeout_s: Any = 600.0,
) -> None:
    """Numbers that make no sense as run settings (0 slots, 0 repeats, a 0 s deadline)."""
    _whole("concurrency", "--concurrency", concurrency, 1)
    _whole("repeats", "--repeats", repeats, 1)
    _whole("max_attempts", "--max-attempts", max_attempts, 1)
    if workers is not None:
        _whole("workers", "--workers", workers, 1)
    if max_failures is not None:
        _whole("max_failures", "--max-failures", max_failures, 0)
    _positive("timeout_s", "--timeout", timeout_s)
    _positive("ready_timeout_s", None, ready_timeout_s)
    _positive("throttle_timeout_s", "--throttle-timeout", throttle_timeout_s)
    if max_failure_fraction is not None and not (
        _is_number(max_failure_fraction) and 0 <= max_failure_fraction <= 1
    ):
        raise ValueError(f"max_failure_fraction (--max-failures P%) must be between 0 and 1 "
                         f"(0% to 100%), got {max_failure_fraction!r}")
    if warm is not None and not (_is_number(warm) and math.isfinite(warm) and warm >= 0):
        raise ValueError(f"warm (--warm) must be a number >= 0, got {warm!r}")


def check_governor(governor: Any) -> None:
    """Governor overrides: a misspelt setting would otherwise be ignored silently."""
    if not isinstance(governor, dict):
        return
    from hud_ray.governor import GovernorPolicy

    known = GovernorPolicy.model_fields
    unknown = sorted(set(governor) - set(known))
    if unknown:
        raise ValueError(f"unknown governor setting(s) {', '.join(unknown)} (--governor-opt); "
                         f"known: {', '.join(known)}")
    for key, value in governor.items():
        low = 0 if key in ZERO_OK else None  # None: strictly positive
        if not (_is_number(value) and math.isfinite(value)
                and (value >= low if low is not None else value > 0)):
            flag = {"create_rate": "--create-rate", "live_cap": "--live-cap"}.get(
                key, f"--governor-opt {key}=")
            bound = ">= 0" if low is not None else "> 0"
            raise ValueError(f"governor {key} ({flag}) must be a number {bound}, got {value!r}")


# Governor settings where 0 means "none" rather than "stuck".
ZERO_OK = ("min_rate", "increase_per_s", "quota_cooldown_s", "deadline_grace_s",
           "create_grace_s")


def check_task_source(tasks: Any) -> None:
    """A task file that is missing, a directory, unreadable or of an unknown type is named
    first — before a provider looks for things beside it (local's default env.py)."""
    if not isinstance(tasks, str | Path):
        return
    rows = iter_rows(tasks)
    try:
        next(rows, None)
    finally:
        rows.close()


def check_tasks(tasks: Any, provider: Provider, *, timeout_s: float,
                teardown_timeout_s: float, limit: int | None = None) -> None:
    """Every row parses, slugs are unique, and the provider can honour what each kind of
    task asks for (image, GPU, resources, lifetime) — named by file and line."""
    if isinstance(tasks, str | Path):
        source, name = tasks_from(tasks), str(tasks)
    elif isinstance(tasks, list | tuple):  # a generator is read once: only the run reads it
        source, name = tasks_from(tasks), "<tasks>"
    else:
        return
    limit = PRESCAN_ROWS if limit is None else limit
    config = RolloutConfig(run_id="plan", teardown_timeout_s=teardown_timeout_s)
    kinds: set[str] = set()
    for count, (line, task) in enumerate(source, start=1):
        rollout = Rollout(task=task, source_line=line)
        key = spec_key(rollout)
        if key not in kinds:
            kinds.add(key)
            _check_spec(provider, rollout, config, timeout_s, f"{name}:{line}")
        if count >= limit:
            return


def _check_spec(provider: Provider, rollout: Rollout, config: RolloutConfig,
                timeout_s: float, where: str) -> None:
    limits = rollout.task.runtime_config.limits if rollout.task.runtime_config else None
    deadline = limits.run_timeout_s if limits and limits.run_timeout_s else timeout_s
    try:
        provider.check_spec(sandbox_spec(rollout, config, deadline))
    except ProviderConfigError as exc:
        kind = UnsupportedSpecError if isinstance(exc, UnsupportedSpecError) else ProviderConfigError
        raise kind(f"{where}: task {rollout.task.slug!r}: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(name: str, flag: str, value: Any, low: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{name} ({flag}) must be a whole number >= {low}, got {value!r}")


def _positive(name: str, flag: str | None, value: Any) -> None:
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        where = f" ({flag})" if flag else ""
        raise ValueError(f"{name}{where} must be a number of seconds > 0, got {value!r}")
