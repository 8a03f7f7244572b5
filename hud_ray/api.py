"""The Python surface: `run_distributed()`, `stream_distributed()`, `attach()`.

    table = run_distributed("examples/demo/tasks.jsonl", "rule", provider="local",
                            concurrency=16, repeats=2)
    table.to_pandas().groupby("template_id").reward.mean()

Both run on the Ray cluster if one is there (`ray.init(address="auto")`), otherwise on a
local Ray started without the dashboard. Rows land in `out/<run_id>/rollouts/*.parquet`
as rollouts finish; the run directory is in the table's schema metadata
(`b"hud_ray.run_dir"`) and in `RunPlan.run_dir`.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from hud_ray.agents import agent_name, resolve_agent
from hud_ray.agents.config import API_KEY_ENV, configure_agent, redacted_config
from hud_ray.llm_governor import check_llm_limits
from hud_ray.prices import check_prices
from hud_ray.progress import Progress
from hud_ray.redact import install_log_scrubber, redacted, run_scrubber
from hud_ray.results import ResultWriter, done_keys, read_manifest, read_results
from hud_ray.tasks import Task, count_rows, expand, file_digest, tasks_from
from providers import get_provider

log = logging.getLogger("hud_ray")

# Environment variables a worker process must see as the driver does.
# Environment variables a worker process must see as the driver does (Ray workers on a
# running cluster inherit the raylet's environment, not the driver's). Credentials travel
# in the actor's creation arguments, never in results or logs.
FORWARDED_ENV = (
    "HUD_RAY_STATE_DIR", "HUD_API_KEY", "PYTHONPATH", "HUD_RAY_EGRESS_CIDRS",
    "HUD_RAY_TLS_CA_FILE",
    "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_ENVIRONMENT", "MODAL_SERVER_URL",
    "MODAL_PROFILE", "DAYTONA_API_KEY", "DAYTONA_API_URL", "DAYTONA_TARGET",
    "DAYTONA_JWT_TOKEN", "DAYTONA_ORGANIZATION_ID", "DOCKER_HOST",
)


def ensure_ray(address: str | None = None) -> None:
    """Join the cluster if there is one, else start a small private Ray (no dashboard)
    that listens on 127.0.0.1 only (`start_private_ray`)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True,
                              "configure_logging": False}
    if address == "local":  # a fresh local Ray, never someone else's cluster
        start_private_ray(**kwargs)
        return
    if address:
        ray.init(address=address, **kwargs)
        return
    # Ray's own default: a cluster started with `ray start` on this machine, else a new
    # local Ray. Not address="auto", which would join any Ray process it finds — a
    # notebook's, another test's.
    if _local_cluster_address() is not None:
        ray.init(include_dashboard=False, **kwargs)
        return
    start_private_ray(**kwargs)


def _local_cluster_address() -> str | None:
    """The `ray start` cluster `ray.init()` would join on this machine, if any."""
    from ray._private import services

    try:
        return services.get_ray_address_from_environment(None, None)
    except Exception:  # let ray.init() report what it finds wrong
        return "unknown"


def start_private_ray(**kwargs: Any) -> None:
    """A new one-machine Ray whose every component listens on 127.0.0.1.

    Ray replaces a loopback `_node_ip_address` with the routable address, so gcs_server,
    raylet, workers and the agents would listen on every interface. Its single-node mode
    (`ENABLE_RAY_CLUSTER` off, its default on macOS) uses the loopback address instead;
    nothing on another machine can join a private Ray, so nothing is lost. Token
    authentication is Ray's own default for a new local cluster (2.52+, token in
    ~/.ray/auth_token, generated if missing) unless RAY_AUTH_MODE says otherwise: we keep
    it, and RAY_AUTH_MODE=disabled (the test suite's) still works, loopback-only.
    """
    import ray
    from ray._private import ray_constants

    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(include_dashboard=False, **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class RunPlan:
    """A validated run, before it starts: everything that can fail early has."""

    run_dir: Path
    scheduler: Any
    progress: Progress

    def stream(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self.scheduler.run()
        finally:
            self.progress.close()


def plan_run(
    tasks: str | Path | Iterable[Task | dict[str, Any]],
    agent: Any,
    provider: str = "local",
    *,
    concurrency: int = 8,
    repeats: int = 1,
    out: str | Path = "runs",
    run_id: str | None = None,
    resume: bool = False,
    workers: int | None = None,
    timeout_s: float = 600.0,
    ready_timeout_s: float = 120.0,
    throttle_timeout_s: float = 600.0,
    max_attempts: int = 3,
    max_failures: int | None = None,
    max_failure_fraction: float | None = None,
    variant: str | None = None,
    progress: bool = True,
    flush_rows: int = 500,
    flush_s: float = 2.0,
    retry_backoff_s: float = 1.0,
    teardown_timeout_s: float = 60.0,
    deadline_grace_s: float = 5.0,
    governor: dict[str, Any] | bool | None = True,
    warm: float | None = None,
    provider_options: dict[str, Any] | None = None,
    agent_config: dict[str, Any] | None = None,
    probe: bool = True,
    keep_raw: bool = False,
    prices: dict[str, Any] | None = None,
    llm_limits: dict[str, Any] | None = None,
    **provider_kwargs: Any,
) -> RunPlan:
    """Validate everything that can fail before a run starts. Provider options come as
    `provider_options={...}` (names may clash with run settings, e.g. `flush_s`) or,
    for convenience, as extra keyword arguments."""
    from hud_ray import preflight

    # Before the run directory or Ray: a bad input ends in one message, nothing touched.
    preflight.check_settings(
        concurrency=concurrency, repeats=repeats, workers=workers, timeout_s=timeout_s,
        ready_timeout_s=ready_timeout_s, throttle_timeout_s=throttle_timeout_s, max_attempts=max_attempts, max_failures=max_failures,
        max_failure_fraction=max_failure_fraction, warm=warm)
    preflight.check_governor(governor)
    prices = check_prices(prices)
    preflight.check_task_source(tasks)
    agent_spec = agent
    agent = configure_agent(agent, agent_config, check_llm_limits(llm_limits))
    resolve_agent(agent)  # fail here, not in every worker
    provider_options = default_provider_options(
        provider, tasks, {**provider_kwargs, **(provider_options or {})})
    driver_provider = get_provider(provider, **provider_options)
    driver_provider.check_config()
    preflight.check_tasks(tasks, driver_provider, timeout_s=timeout_s,
                          teardown_timeout_s=teardown_timeout_s)
    driver_provider.check_credentials()  # may dial the provider's API: after offline checks
    if resume and not run_id:
        raise ValueError("--resume needs --run-id (the run to continue)")
    preflight.check_resume(out, run_id, resume)
    run_id = run_id or new_run_id()
    run_dir = Path(out) / run_id
    agent_label = agent_spec if isinstance(agent_spec, str) else agent_name(agent)
    config = {
        "tasks": str(tasks) if isinstance(tasks, str | Path) else "<in-memory>",
        **_task_file_identity(tasks),
        "agent": agent_label, "agent_config": redacted_config(agent_config),
        "llm_limits": llm_limits,
        "provider": provider, "repeats": repeats, "variant": variant,
        "provider_options": redacted(provider_options), "concurrency": concurrency,
        "timeout_s": timeout_s, "max_attempts": max_attempts,
    }
    from hud_ray.scheduler import Scheduler, SchedulerConfig  # imports Ray: after the checks

    env_vars = {k: os.environ[k] for k in (*FORWARDED_ENV, *agent_env_names(agent_config))
                if k in os.environ}
    scrubber = run_scrubber(provider_options, env_vars)
    install_log_scrubber(scrubber)
    writer = ResultWriter(run_dir, config=config, resume=resume,
                          flush_rows=flush_rows, flush_s=flush_s, scrubber=scrubber)
    skip = done_keys(run_dir) if resume else set()
    rows = count_rows(tasks) if isinstance(tasks, str | Path) else None
    total = rows * repeats if rows is not None else None
    bar = Progress(total, enabled=progress, already_done=len(skip))
    sched_config = SchedulerConfig(
        run_id=run_id, provider=provider, provider_options=provider_options, agent=agent,
        concurrency=concurrency, workers=workers, max_attempts=max_attempts,
        max_failures=max_failures, max_failure_fraction=max_failure_fraction,
        retry_backoff_s=retry_backoff_s, deadline_grace_s=deadline_grace_s,
        rollout={"deadline_s": timeout_s, "ready_timeout_s": min(ready_timeout_s, timeout_s),
                 "teardown_timeout_s": teardown_timeout_s,
                 "throttle_timeout_s": throttle_timeout_s, "keep_raw": keep_raw,
                 "prices": prices},
        env_vars=env_vars, governor=governor_settings(governor), resume=resume,
        probe_first=probe,
        warm_per_slot=(warm if warm is not None
                       else (1.0 if driver_provider.capabilities.warm_ahead else 0.0)),
    )
    ensure_ray()
    rollouts = expand(tasks_from(tasks), repeats=repeats, variant=variant)
    scheduler = Scheduler(sched_config, rollouts, writer, driver_provider, skip_keys=skip,
                          progress=bar)
    return RunPlan(run_dir=run_dir, scheduler=scheduler, progress=bar)


def _task_file_identity(tasks: Any) -> dict[str, Any]:
    """How a resume recognises the task file: its real path and its bytes' digest."""
    if not isinstance(tasks, str | Path):
        return {}
    return {"tasks_realpath": os.path.realpath(tasks), "tasks_sha256": file_digest(tasks)}


def stream_distributed(tasks: Any, agent: Any, provider: str = "local",
                       **kwargs: Any) -> Iterator[pa.RecordBatch]:
    """Yield RecordBatches as they are written to Parquet (the first lands early)."""
    yield from plan_run(tasks, agent, provider, **kwargs).stream()


def run_distributed(tasks: Any, agent: Any, provider: str = "local",
                    **kwargs: Any) -> pa.Table:
    """Run every rollout; return the whole run (resumed rows included) as one table."""
    plan = plan_run(tasks, agent, provider, **kwargs)
    for _ in plan.stream():
        pass
    return _with_run_dir(read_results(plan.run_dir), plan.run_dir)


@dataclass
class RunView:
    """A run read from disk, finished or still going."""

    run_dir: Path
    table: pa.Table
    manifest: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.manifest.get("counts", {}))

    @property
    def state(self) -> str:
        return self.manifest.get("state", "unknown")


def attach(run_dir: str | Path) -> RunView:
    """Read a run — also one still in progress (partial table + counts so far)."""
    return RunView(Path(run_dir), read_results(run_dir), read_manifest(run_dir))


def _with_run_dir(table: pa.Table, run_dir: Path) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[b"hud_ray.run_dir"] = str(run_dir).encode()
    return table.replace_schema_metadata(metadata)


def default_provider_options(provider: str, tasks: Any, options: dict[str, Any]) -> dict[str, Any]:
    """`local` without env_file: use env.py beside the task file, when there is one."""
    if provider == "local" and "env_file" not in options and isinstance(tasks, str | Path):
        source = Path(tasks)
        candidate = (source if source.is_dir() else source.parent) / "env.py"
        if candidate.is_file():
            return {**options, "env_file": str(candidate)}
    return options


def agent_env_names(agent_config: dict[str, Any] | None) -> tuple[str, ...]:
    """Variables an agent's configuration names (its API key): workers must see them."""
    name = (agent_config or {}).get(API_KEY_ENV)
    return (name,) if isinstance(name, str) and name else ()


def governor_settings(governor: dict[str, Any] | bool | None) -> dict[str, Any] | None:
    """True → the provider's defaults; a dict → overrides; False/None → no governor."""
    if governor is True:
        return {}
    if not governor:
        return None
    return dict(governor)

