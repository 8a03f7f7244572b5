"""`hud-ray sweep sweep.yaml`: a grid of tasksets x agents x providers x repeats, run into
ONE run directory with a `variant` column, resumable like a run.

    name: agents-vs-repeats            # the run id (override with --run-id)
    out: runs
    concurrency: 8
    timeout_s: 600
    tasksets:  [{name: demo, path: examples/demo/tasks.jsonl}]
    agents:
      - {name: rule, spec: rule}
      - {name: rule-slow, spec: "examples/demo/agents.py:make_agent", params: {delay_s: 0.1}}
    providers: [{name: local, provider: local, options: {env_file: examples/demo/env.py}}]
    repeats: [1, 2]
    llm_limits: {rpm: 600}             # optional: the agents' model endpoints, governed
    prices: {my-model: {input: 0.2, output: 0.8}}   # optional: $/1M tokens for cost_usd

An agent's `params` are its configuration: a `hud:` or `openai:` spec takes the same
settings as `--agent-opt` (`model`, `base_url`, `api_key_env`, ...); any other spec names
a factory called with them. Every combination is a variant named by the values that vary (`rule|r2`); its rollout keys
carry `@variant`, so variants never collide and a resume skips exactly what was written.
Variants that share a provider run together in one scheduler pass (one set of workers);
providers run one after another.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hud_ray.agents import ConfiguredAgent
from hud_ray.tasks import Rollout, expand, iter_tasks


class SweepError(ValueError):
    """A sweep file that cannot be used; the message names the file and the field."""


class TasksetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.path).stem


class AgentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    spec: str
    params: dict[str, Any] = Field(default_factory=dict)


class ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    provider: str = "local"
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.provider


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    out: str = "runs"
    tasksets: list[TasksetSpec] = Field(min_length=1)
    agents: list[AgentSpec] = Field(min_length=1)
    providers: list[ProviderSpec] = Field(default_factory=lambda: [ProviderSpec()], min_length=1)
    repeats: list[int] = Field(default_factory=lambda: [1], min_length=1)
    concurrency: int = Field(8, ge=1)
    workers: int | None = Field(None, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    llm_limits: dict[str, Any] | None = Field(
        None, description="the agents' model endpoints under the LLM governor (rpm, tpm, "
        "max_concurrent; see hud_ray/llm_governor.py)")
    prices: dict[str, Any] | None = Field(None, description="$/1M tokens by model, for cost_usd")
    keep_raw: bool = False

    @field_validator("repeats")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(r < 1 for r in value):
            raise ValueError("every repeats value must be >= 1")
        return value

    @field_validator("agents", "tasksets", "providers")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        labels = [getattr(v, "label", None) or v.name for v in value]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"names must be unique, repeated: {', '.join(dupes)}")
        return value


class Variant(BaseModel):
    name: str
    taskset: TasksetSpec
    agent: AgentSpec
    provider: ProviderSpec
    repeats: int


def load_sweep(path: str | Path) -> SweepConfig:
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: sweep file not found") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping at the top level")
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SweepError(f"{path}: field {where!r}: {err['msg']}{more}") from None
    base = file.parent
    for taskset in config.tasksets:  # paths are relative to the sweep file
        if not Path(taskset.path).is_absolute() and (base / taskset.path).exists():
            taskset.path = str(base / taskset.path)
        if not Path(taskset.path).is_file():
            raise SweepError(f"{path}: taskset {taskset.label!r}: file {taskset.path} not found")
    return config


def variants(config: SweepConfig) -> list[Variant]:
    grid = list(itertools.product(config.tasksets, config.agents, config.providers,
                                  config.repeats))
    varying = [len(config.tasksets) > 1, len(config.agents) > 1, len(config.providers) > 1,
               len(config.repeats) > 1]
    out = []
    for taskset, agent, provider, repeats in grid:
        parts = [taskset.label, agent.name, provider.label, f"r{repeats}"]
        name = "|".join(p for p, vary in zip(parts, varying, strict=True) if vary) or agent.name
        out.append(Variant(name=name, taskset=taskset, agent=agent, provider=provider,
                           repeats=repeats))
    return out


def rollouts_for(variant_list: list[Variant]) -> Iterator[Rollout]:
    """Lazily, variant after variant: a task file is read only when its variant runs."""
    for variant in variant_list:
        yield from expand(iter_tasks(variant.taskset.path), repeats=variant.repeats,
                          variant=variant.name)


def by_provider(variant_list: list[Variant]) -> dict[str, list[Variant]]:
    groups: dict[str, list[Variant]] = {}
    for variant in variant_list:
        groups.setdefault(variant.provider.label, []).append(variant)
    return groups


def agents_for(variant_list: list[Variant],
               llm_limits: dict[str, Any] | None = None) -> dict[str, ConfiguredAgent]:
    def params(spec: AgentSpec) -> dict[str, Any]:
        governed = llm_limits and spec.spec.startswith(("hud:", "openai:"))
        return {**spec.params, "llm_limits": llm_limits} if governed else spec.params

    return {v.name: ConfiguredAgent(v.agent.spec, params(v.agent), label=v.agent.name)
            for v in variant_list}


def sweep_fingerprint(config: SweepConfig) -> dict[str, Any]:
    """What a resume must match (the grid, not run-time knobs like concurrency)."""
    return config.model_dump(include={"tasksets", "agents", "providers", "repeats"})


def stream_sweep(path: str | Path, *, run_id: str | None = None, out: str | None = None,
                 resume: bool = False, progress: bool = True,
                 concurrency: int | None = None, workers: int | None = None,
                 governor: Any = True) -> Iterator[Any]:
    """Run a sweep; yield RecordBatches as they land. See the module docstring."""
    import os

    from hud_ray import preflight
    from hud_ray.api import (
        FORWARDED_ENV,
        agent_env_names,
        default_provider_options,
        ensure_ray,
        governor_settings,
    )
    from hud_ray.llm_governor import check_llm_limits
    from hud_ray.prices import check_prices
    from hud_ray.progress import Progress
    from hud_ray.redact import install_log_scrubber, redacted, run_scrubber
    from hud_ray.results import ResultWriter, done_keys
    from hud_ray.scheduler import Scheduler, SchedulerConfig
    from hud_ray.tasks import count_rows
    from providers import get_provider

    config = load_sweep(path)
    try:
        llm_limits = check_llm_limits(config.llm_limits)
        prices = check_prices(config.prices, where=f"{path}: prices")
    except ValueError as exc:
        raise SweepError(f"{path}: {exc}") from None
    grid = variants(config)
    run_dir = Path(out or config.out) / (run_id or config.name)
    groups = by_provider(grid)
    plans = []
    for label, group in groups.items():  # validate every provider before anything runs
        spec = group[0].provider
        options = default_provider_options(spec.provider, group[0].taskset.path, spec.options)
        provider = get_provider(spec.provider, **options)
        provider.check_config()
        for taskset in {v.taskset.path for v in group}:  # rows, slugs, what each task asks
            preflight.check_tasks(taskset, provider, timeout_s=config.timeout_s,
                                  teardown_timeout_s=60.0)
        provider.check_credentials()  # may dial the provider's API: after offline checks
        for agent in agents_for(group, llm_limits).values():
            agent.build()  # a bad agent spec or params fails here, not in every worker
        plans.append((label, group, options, provider))
    preflight.check_resume(out or config.out, run_id or config.name, resume)
    manifest = {"sweep": sweep_fingerprint(config), "tasks": str(path),
                "variants": [v.name for v in grid],
                "providers": {label: redacted(o) for label, _, o, _ in plans}}
    key_vars = [name for v in grid for name in agent_env_names(v.agent.params)]
    env_vars = {k: os.environ[k] for k in (*FORWARDED_ENV, *key_vars) if k in os.environ}
    scrubber = run_scrubber({label: o for label, _, o, _ in plans}, env_vars)
    install_log_scrubber(scrubber)
    writer = ResultWriter(run_dir, config=manifest, resume=resume, scrubber=scrubber)
    skip = done_keys(run_dir) if resume else set()
    rows = [count_rows(v.taskset.path) for v in grid]
    total = sum(r * v.repeats for r, v in zip(rows, grid, strict=True)) if all(
        r is not None for r in rows) else None
    bar = Progress(total, enabled=progress, already_done=len(skip))
    ensure_ray()
    try:
        for index, (_, group, options, provider) in enumerate(plans):
            sched = SchedulerConfig(
                run_id=run_dir.name, provider=group[0].provider.provider,
                provider_options=options, agent=agents_for(group, llm_limits),
                concurrency=concurrency or config.concurrency, workers=workers or config.workers,
                max_attempts=config.max_attempts, resume=resume or index > 0,
                rollout={"deadline_s": config.timeout_s, "keep_raw": config.keep_raw,
                         "prices": prices},
                env_vars=env_vars,
                governor=governor_settings(governor),
                warm_per_slot=1.0 if provider.capabilities.warm_ahead else 0.0,
            )
            scheduler = Scheduler(sched, rollouts_for(group), writer, provider, skip_keys=skip,
                                  progress=bar, close_sink=False)
            yield from scheduler.run()
        writer.close("finished")
    finally:
        bar.close()


def run_sweep(path: str | Path, **kwargs: Any) -> Any:
    """Run a sweep to the end; return the whole run (every variant) as one table."""
    from hud_ray.results import read_results

    config = load_sweep(path)
    run_dir = Path(kwargs.get("out") or config.out) / (kwargs.get("run_id") or config.name)
    for _ in stream_sweep(path, **kwargs):
        pass
    return read_results(run_dir)
