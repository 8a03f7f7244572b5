"""Options of the `daytona` provider (`--provider-opt KEY=VALUE`), validated up front.

Credentials come from the process environment by default (`DAYTONA_API_KEY`,
`DAYTONA_API_URL`, `DAYTONA_TARGET`) and are passed to the SDK explicitly, so a stray
`.env` in a worker's working directory cannot redirect them. The key is a `SecretStr`:
it never shows in a repr, a log line or a result row.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .. import imagedir
from ..base import SandboxSpec

DEFAULT_PORT = 8765
DEFAULT_WORKDIR = "/app"
# Finds the env's own virtualenv when the image has one (hud's scaffold: `uv sync` into
# /app/.venv), else the image's python. Bound to 127.0.0.1: the SSH forward is the only
# way in, so the env server is never exposed on the sandbox's network.
DEFAULT_COMMAND = (
    'if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi; '
    '"$PY" -m hud.environment.server env.py --host 127.0.0.1 --port {port}'
)
# Keeps the image's own CMD (often `hud serve ... --host 0.0.0.0`) from starting a second,
# exposed server: ours is started in a session, bound to loopback.
DEFAULT_ENTRYPOINT = ["sleep", "infinity"]


def all_interfaces_address(command: str) -> str | None:
    """The first address in `command` that means "every interface" (0.0.0.0, ::, [::],
    0:0:0:0:0:0:0:0, with or without a :port, as a word or after `=`), else None.
    Parsed as addresses, not matched as text: `::` and `[::]:8765` are caught, `10.0.0.01`
    or a path containing "0.0.0.0" are not mistaken for one."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for word in words:
        for candidate in _address_candidates(word):
            try:
                if ipaddress.ip_address(candidate).is_unspecified:
                    return word
            except ValueError:
                continue
    return None


def _address_candidates(word: str) -> list[str]:
    """`word` itself, its value after `=` (`--host=::`), and either without a :port."""
    values = [word, word.rpartition("=")[2]]
    out = []
    for value in values:
        value = value.strip(";&|()'\"")
        out.append(value.strip("[]"))
        if value.startswith("[") and "]:" in value:  # [::]:8765
            out.append(value[1:value.index("]:")])
        host, sep, port = value.rpartition(":")
        if sep and (port.isdigit() or port == "{port}") and ":" not in host:  # 0.0.0.0:8765
            out.append(host)
    return out


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _env_secret(name: str) -> SecretStr | None:
    value = _env(name)
    return SecretStr(value) if value else None


class DaytonaResources(BaseModel):
    """Per-snapshot resources (Daytona sets them when a snapshot is built)."""

    model_config = ConfigDict(extra="forbid")
    cpu: int | None = Field(None, ge=1)
    memory_gib: int | None = Field(None, ge=1)
    disk_gib: int | None = Field(None, ge=1)


class DaytonaOptions(BaseModel):
    # validate_default: values taken from the environment are checked like given ones.
    model_config = ConfigDict(extra="forbid", validate_default=True)

    # --- account -------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        default_factory=lambda: _env_secret("DAYTONA_API_KEY"),
        description="API key (default: $DAYTONA_API_KEY); never logged",
    )
    api_url: str | None = Field(
        default_factory=lambda: _env("DAYTONA_API_URL"),
        description="API URL (default: $DAYTONA_API_URL, else the SDK's https://app.daytona.io/api)",
    )
    target: str | None = Field(
        default_factory=lambda: _env("DAYTONA_TARGET"),
        description="region (default: $DAYTONA_TARGET, else the organization's default)",
    )

    # --- what runs --------------------------------------------------------------------
    snapshot: str | None = Field(
        None,
        description="snapshot to start from; with `image` it is the prefix of the built "
        "snapshot's name (`<snapshot>-<recipe hash>`)",
    )
    image: str | None = Field(
        None, description="registry image, or a directory with Dockerfile.hud / Dockerfile, to "
        "build a snapshot from (a task's runtime_config.image wins)"
    )
    entrypoint: list[str] = Field(default_factory=lambda: list(DEFAULT_ENTRYPOINT))
    resources: DaytonaResources | None = None
    command: str = Field(
        DEFAULT_COMMAND, description="starts the env server; placeholders {port} (required), {env_name}"
    )
    workdir: str | None = Field(DEFAULT_WORKDIR, description="directory the command runs in")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="env server port inside the sandbox")
    env_vars: dict[str, str] = Field(default_factory=dict, description="added to every sandbox")
    labels: dict[str, str] = Field(default_factory=dict, description="added to every sandbox")

    # --- lifecycle --------------------------------------------------------------------
    auto_stop_minutes: int = Field(
        15, ge=1, description="idle minutes before Daytona stops a sandbox (0 = never is refused)"
    )
    ephemeral: bool = Field(True, description="delete as soon as the sandbox stops")
    create_timeout_s: float = Field(120.0, gt=0)
    snapshot_timeout_s: float = Field(1800.0, gt=0)
    snapshot_poll_s: float = Field(2.0, gt=0, description="while another builder finishes")
    delete_timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0, description="retries of one API call (429, 5xx, connection)")
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    retry_after_max_s: float = Field(
        120.0, gt=0, description="a longer Retry-After ends the call with a QuotaError at once"
    )

    # --- SSH tunnel -------------------------------------------------------------------
    known_hosts: str | None = Field(
        None, description="known_hosts file for the SSH gateway (wins over host_key_policy)"
    )
    host_key_policy: Literal["pinned", "accept-any"] = Field(
        "pinned", description="pinned: trust only the gateway host keys the Daytona API reports "
        "(GET /config, over its TLS), refuse to connect if it reports none; accept-any: "
        "accept and record any key (the SSH username is the access token: opt in knowingly)",
    )
    ssh_token_minutes: int = Field(60, ge=1)
    ssh_token_refresh_margin_s: float = Field(120.0, ge=0)
    ssh_connect_timeout_s: float = Field(15.0, gt=0)
    ssh_keepalive_s: float = Field(30.0, gt=0)
    ready_retry_interval_s: float = Field(0.5, gt=0)
    probe_hello: bool = Field(True, description="ready() says hello through the tunnel")
    output_lines: int = Field(40, ge=1)

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (DAYTONA_API_URL), got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("command")
    @classmethod
    def _command_uses_port(cls, value: str) -> str:
        if "{port}" not in value:
            raise ValueError(
                "must contain {port}: the same port setting feeds the command and the SSH forward"
            )
        exposed = all_interfaces_address(value)
        if exposed is not None:
            raise ValueError(
                f"must not bind {exposed} (every interface): bind 127.0.0.1, the SSH forward "
                "is the only ingress"
            )
        try:
            value.format(port=DEFAULT_PORT, env_name="env")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad placeholder ({exc}); known: {{port}}, {{env_name}}") from None
        return value

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"file not found: {value!r}")
        return str(Path(value).expanduser()) if value else value

    @model_validator(mode="after")
    def _backoff_order(self) -> DaytonaOptions:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        return self

    # --- derived ----------------------------------------------------------------------
    def render_command(self, spec: SandboxSpec) -> str:
        """The shell line run in the sandbox's background session."""
        body = self.command.format(port=self.port, env_name=spec.env_name or "")
        if self.workdir:
            return f"cd {shlex.quote(self.workdir)} && ( {body} )"
        return body

    def ttl_minutes(self, spec: SandboxSpec) -> int:
        """Hard wall-clock cap: the rollout's whole life, rounded up to a minute."""
        return max(1, math.ceil(spec.lifetime_s / 60.0))


class Recipe(BaseModel):
    """What a built snapshot is made of; its hash names the snapshot, so a changed recipe
    builds a new one and never reuses a stale one."""

    image: str  # a registry image, or `dir:<content hash>` for an image directory
    entrypoint: list[str]
    cpu: int | None = None
    memory_gib: int | None = None
    disk_gib: int | None = None
    # Where an image directory lies here (not hashed: the content hash names it).
    context_dir: str | None = Field(None, exclude=True)

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def snapshot_name(self, prefix: str | None) -> str:
        return f"{prefix or 'hud-ray'}-{self.digest[:12]}"

    def sdk_resources(self) -> Any:
        from daytona import Resources

        if self.cpu is None and self.memory_gib is None and self.disk_gib is None:
            return None
        return Resources(cpu=self.cpu, memory=self.memory_gib, disk=self.disk_gib)


def recipe_for(options: DaytonaOptions, spec: SandboxSpec) -> Recipe | None:
    """The snapshot recipe for `spec`, or None to start from `options.snapshot` as is."""
    image = spec.image or options.image
    if image is None:
        return None
    base = options.resources or DaytonaResources()
    cpu, memory_gib, disk_gib = base.cpu, base.memory_gib, base.disk_gib
    wanted = spec.resources
    if wanted is not None:
        # Daytona counts whole CPUs and GiB: round a task's request up, never down.
        if wanted.cpu is not None:
            cpu = max(1, math.ceil(wanted.cpu))
        if wanted.memory_mb is not None:
            memory_gib = max(1, math.ceil(wanted.memory_mb / 1024))
        if wanted.storage_mb is not None:
            disk_gib = max(1, math.ceil(wanted.storage_mb / 1024))
    context_dir = None
    if imagedir.is_image_dir(image):
        # One image definition: DIR's Dockerfile.hud / Dockerfile, content-hashed.
        context_dir, image = image, f"dir:{imagedir.digest(image)[:32]}"
    return Recipe(
        image=image,
        context_dir=context_dir,
        entrypoint=list(options.entrypoint),
        cpu=cpu,
        memory_gib=memory_gib,
        disk_gib=disk_gib,
    )
