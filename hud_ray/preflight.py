"""Plan-time checks: every bad input a run can know about before Ray starts.

`plan_run` calls these before it touches the run directory or starts Ray, so a bad
setting, a bad task file or a task the provider cannot honour ends in one message naming
it — and an existing run directory (resume) is left exactly as it was.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hud_ray import envscan
from hud_ray.results import RunDirError
from hud_ray.rollout import RolloutConfig, sandbox_spec
from hud_ray.tasks import Rollout, Task, TaskFileError, iter_rows, tasks_from
from hud_ray.warm import spec_key
from hud_ray.wire import FRAME_LIMIT_BYTES
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
    keep_workers_s()


KEEP_WORKERS_ENV = "HUD_RAY_KEEP_WORKERS_S"
DEFAULT_KEEP_WORKERS_S = 300.0


def keep_workers_s() -> float:
    """How long a worker is kept idle for the next run (hud_ray.pool); 0 = not kept."""
    text = os.environ.get(KEEP_WORKERS_ENV, "").strip()
    if not text:
        return DEFAULT_KEEP_WORKERS_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{KEEP_WORKERS_ENV}={text!r}: expected seconds >= 0 to keep idle "
                         "workers for the next run (0 = end them with each run)")
    return value


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
    templates_of = template_lister(provider)
    count = 0
    for count, (line, task) in enumerate(source, start=1):
        rollout = Rollout(task=task, source_line=line)
        check_frame_size(task, f"{name}:{line}")
        if templates_of is not None:
            _check_template(task, templates_of(task), f"{name}:{line}", provider)
        key = spec_key(rollout)
        if key not in kinds:
            kinds.add(key)
            _check_spec(provider, rollout, config, timeout_s, f"{name}:{line}")
        if count >= limit:
            return
    if count == 0:
        # A run of nothing would "succeed" with exit 0: almost always the wrong file.
        raise TaskFileError(f"{name}: no task rows (the task file is empty)")


def template_lister(provider: Provider) -> Callable[[Task], set[str] | None] | None:
    """Where the env's templates can be known without a sandbox — the local provider
    serving an envkit env file, read by `hud_ray.envscan` — a function giving them for a
    task (None: not knowable for that file); elsewhere None, and the sandbox says."""
    options = getattr(provider, "options", None)
    env_file = getattr(options, "env_file", None)
    # The command the provider will run (local's default depends on the env file's server).
    command = getattr(provider, "command", None) or getattr(options, "command", None) or ""
    if provider.name != "local" or not env_file or "hud_ray.envkit" not in command:
        return None
    by_name = "{env_name}" in command  # else envkit serves the file's only Environment
    scanned: dict[str | None, set[str] | None] = {}

    def templates_of(task: Task) -> set[str] | None:
        key = task.env_name if by_name else None
        if key not in scanned:
            scanned[key] = envscan.scan(env_file, key)
        return scanned[key]

    return templates_of


def _check_template(task: Task, templates: set[str] | None, where: str,
                    provider: Provider) -> None:
    if templates is None or task.id in templates:
        return
    env_file = provider.options.env_file  # type: ignore[attr-defined]
    raise TaskFileError(
        f"{where}: task {task.slug!r}: template {task.id!r} is not in {env_file} "
        f"(its templates: {', '.join(sorted(templates)) or 'none'})")


# What `tasks.start` adds around a task's id and args (method, ids, braces): generous.
START_FRAME_OVERHEAD_BYTES = 256


def check_frame_size(task: Task, where: str) -> None:
    """A task whose `tasks.start` frame would exceed the wire's limit can never start;
    say so by file and line instead of failing every attempt on the wire."""
    budget = FRAME_LIMIT_BYTES - START_FRAME_OVERHEAD_BYTES - len(task.id.encode())
    size = _json_size(task.args, budget)
    if size > budget:
        raise TaskFileError(
            f"{where}: task {task.slug!r}: args are {size} bytes as JSON; a tasks.start frame "
            f"is limited to {FRAME_LIMIT_BYTES} bytes (16 MiB) — pass large data through a "
            "file or URL the env fetches")


def _json_size(value: Any, budget: int) -> int:
    """Encoded size of `value`, computed only when a cheap estimate says it may be big."""
    # JSON (ensure_ascii, as the wire sends it) spends at most 12 bytes on one character
    # (an astral one as two \uXXXX escapes); repr is never shorter than the characters.
    if len(repr(value)) * 12 < budget:
        return 0
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def check_resume(out: str | Path, run_id: str | None, resume: bool) -> None:
    """`--resume` of a run that was never started is a typo, not a new run."""
    if not resume or not run_id:
        return
    run_dir = Path(out) / run_id
    if not (run_dir / "manifest.json").is_file():
        raise RunDirError(
            f"--resume: there is no run {run_id!r} in {out} ({run_dir}/manifest.json not "
            "found); drop --resume to start it as a new run")


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
