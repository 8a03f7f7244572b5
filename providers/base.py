"""The provider contract: how hud_ray gets one fresh sandbox per rollout.

Lifecycle is split into stages so a ledger can record every sandbox *before* and after
the provider is asked for it (Inspect-style scopes, verifiers-style shielded teardown):

    spec  = SandboxSpec(...)                 # what the rollout needs
    handle = await provider.create(spec, labels)   # id known as early as the SDK allows
    endpoint = await provider.ready(handle, timeout_s)   # tcp://host:port of the env server
    ...                                           # rollout speaks the wire protocol
    await provider.destroy(handle)                # idempotent, shielded from cancellation
    await provider.reap(labels)                   # orphans left by a crash (CLI: hud-ray reap)

This module imports neither Ray nor hud_ray: providers are usable on their own.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ProviderConfigError, UnsupportedSpecError

# Label keys put on every sandbox, so a reaper can find what a run left behind.
LABEL_RUN = "hud-ray-run"
LABEL_ROLLOUT = "hud-ray-rollout"
LABEL_OWNER = "hud-ray-owner"
# Only on warm sandboxes (no rollout yet): who to reap them with when that worker dies.
LABEL_WORKER = "hud-ray-worker"
# Put by the governor's wrapper: finds a sandbox whose create never answered, exactly.
LABEL_SANDBOX = "hud-ray-sandbox"
# One driver start of a run (a run id names results; each start of it is an incarnation):
# what "finished" and "orphan" refer to, so a reused run id never reaps its own sandboxes.
LABEL_INCARNATION = "hud-ray-incarnation"
# The driver process behind an incarnation (`host:pid:start-time`): a later driver on the
# same host can prove it dead and destroy what it left.
LABEL_DRIVER = "hud-ray-driver"

T = TypeVar("T")


class GpuSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str | None = None
    count: int = 1


class Resources(BaseModel):
    """HUD's `runtime_config.resources` (hud rejects unknown fields; so do we)."""

    model_config = ConfigDict(extra="forbid")
    cpu: float | None = None
    memory_mb: int | None = None
    storage_mb: int | None = None
    gpu: GpuSpec | None = None
    os: str | None = None


class SandboxSpec(BaseModel):
    """What one rollout asks of a provider. Built by hud_ray from the task row."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="deterministic sandbox name: a retried create finds it")
    image: str | None = None
    compose: Any = Field(None, description="runtime_config.compose (no provider runs one yet)")
    env_name: str | None = None
    env_vars: dict[str, str] = Field(default_factory=dict)
    resources: Resources | None = None
    lifetime_s: float = Field(3600.0, description="hard cap on the sandbox's life")
    startup_timeout_s: float = 120.0


class SandboxHandle(BaseModel):
    """Everything needed to find, reach and destroy one sandbox, JSON-serialisable
    so it can travel through a ledger, a Ray call or a file."""

    provider: str
    sandbox_id: str
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    data: dict[str, Any] = Field(default_factory=dict, description="provider-private state")


class Endpoint(BaseModel):
    """Where the env server answers. `preamble` is sent first on every new connection
    (e.g. the Modal token gate's secret); it is excluded from repr and dumps."""

    url: str
    preamble: bytes | None = Field(default=None, repr=False, exclude=True)

    @property
    def host_port(self) -> tuple[str, int]:
        rest = self.url.partition("://")[2]
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port)


class Capabilities(BaseModel):
    """What a provider can honour; checked at plan time, before any sandbox exists."""

    images: bool = False
    resources: set[str] = Field(default_factory=set)
    gpu: bool = False
    warm_ahead: bool = False


def sandbox_name(run_id: str, rollout_key: str, attempt: int, incarnation: str = "") -> str:
    """Deterministic, provider-safe name: same rollout attempt of one incarnation → same
    name (a retried create finds it); another incarnation never shares it."""
    digest = hashlib.sha1(f"{run_id}/{rollout_key}/{attempt}".encode()).hexdigest()[:16]
    return f"hudray-{digest}-{incarnation}" if incarnation else f"hudray-{digest}"


def attempt_name(name: str) -> str:
    """`name` without its incarnation: the same for every start of one rollout attempt
    (the sim draws its fates by this, so a rerun meets the same ones)."""
    match = _INCARNATED.fullmatch(name)
    return match.group(1) if match else name


_INCARNATED = re.compile(r"(hudray-[0-9a-f]{16})-[0-9a-f]+")


class Provider(ABC):
    """Base class for sandbox providers. Subclasses set `name`, `Options` and limits."""

    name: ClassVar[str] = "base"
    #: pydantic model validating the provider's options (`--provider-opt KEY=VALUE`).
    Options: ClassVar[type[BaseModel]]
    #: creates per second a governor allows by default for one account.
    default_create_rate: ClassVar[float] = 10.0
    #: live sandboxes a governor allows by default for one account.
    default_live_cap: ClassVar[int] = 256
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: False for a provider that only borrows env servers (`attach`): nothing to reap.
    owns_sandboxes: ClassVar[bool] = True
    #: listing every hud-ray sandbox costs no cloud call (e.g. an on-disk ledger): a
    #: starting driver looks for every dead run's leftovers, not only its own run's.
    sweep_all_on_start: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        try:
            self.options = self.Options(**options)
        except ValidationError as exc:
            raise ProviderConfigError(
                f"provider {self.name!r}: bad option(s): {_describe(exc)}"
                f"{_unknown_hint(exc, list(self.Options.model_fields))}"
            ) from None

    # --- plan time -------------------------------------------------------------------
    def check_config(self) -> None:
        """Raise ProviderConfigError if sandboxes cannot be created as configured (called
        once before a run starts; `list`/`reap` work without it, e.g. with no env file)."""
        return None

    def check_credentials(self) -> None:
        """Raise ProviderConfigError, cheaply (no sandbox, seconds at most), when this
        provider cannot reach its account: no credentials, or an API that does not answer.
        Called at plan time after the offline checks (`check_config`, the task scan) and by
        `hud-ray reap`, which skips such a provider by name."""
        return None

    def check_spec(self, spec: SandboxSpec) -> None:
        """Raise UnsupportedSpecError for anything in `spec` this provider cannot honour."""
        caps = self.capabilities
        if spec.compose is not None:
            raise UnsupportedSpecError(
                f"provider {self.name!r} cannot run a Compose project (runtime_config.compose)"
            )
        if spec.image and not caps.images:
            raise UnsupportedSpecError(
                f"provider {self.name!r} cannot run images (runtime_config.image={spec.image!r})"
            )
        if spec.resources is not None:
            for field in spec.resources.model_fields_set:
                if getattr(spec.resources, field) is None:
                    continue
                if field not in caps.resources:
                    raise UnsupportedSpecError(
                        f"provider {self.name!r} cannot honour runtime_config.resources.{field}"
                    )

    def account(self) -> str:
        """Which quota this provider draws on (one governor per provider account).
        Override to derive it from credentials, e.g. a hash of the API key's id."""
        return str(getattr(self.options, "account", None) or "default")

    # --- lifecycle -----------------------------------------------------------------
    @abstractmethod
    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        """Ask for a sandbox; return as soon as it has an id (it may not serve yet)."""

    @abstractmethod
    async def ready(self, handle: SandboxHandle, timeout_s: float) -> Endpoint:
        """Wait until the sandbox's env server can be dialled; return its endpoint."""

    @abstractmethod
    async def destroy(self, handle: SandboxHandle) -> None:
        """Free the sandbox. Idempotent; callers shield it from cancellation."""

    @abstractmethod
    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        """Live sandboxes carrying all of `labels`."""

    async def reap(self, labels: dict[str, str]) -> list[SandboxHandle]:
        """Destroy every sandbox carrying `labels`; return what was destroyed."""
        found = await self.list(labels)
        await asyncio.gather(*(self.destroy(h) for h in found), return_exceptions=True)
        return found

    async def diagnostics(self, handle: SandboxHandle) -> str:
        """Last output lines of the sandbox's env server, for error messages."""
        return ""

    def keepalive_interval_s(self) -> float | None:
        """How often `keep_alive` must be called on a sandbox nothing else talks to, so
        the provider does not stop it as idle (None: its sandboxes have no idle timer)."""
        return None

    async def keep_alive(self, handle: SandboxHandle) -> None:
        """Reset the sandbox's idle timer (a rollout waiting out a trainer's pause has
        no traffic of its own). Only called when `keepalive_interval_s` is not None."""
        return None

    async def close(self) -> None:
        """Release process-wide resources (SDK clients, SSH connections)."""
        return None


def _unknown_hint(exc: ValidationError, fields: list[str]) -> str:
    """For a misspelt option: the likely one, else every option there is."""
    unknown = [str(e["loc"][0]) for e in exc.errors()
               if e["type"] == "extra_forbidden" and e["loc"]]
    if not unknown:
        return ""
    close = [m for u in unknown for m in difflib.get_close_matches(u, fields, n=1)]
    if close:
        return f" (did you mean {', '.join(map(repr, close))}?)"
    return f" (known options: {', '.join(fields)})"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(options)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def shielded(awaitable: Awaitable[T]) -> T:
    """Run `awaitable` to completion even if the caller is cancelled, then re-raise
    the cancellation. Teardown must finish or the sandbox leaks."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
