"""Options of the `modal` provider and the pure functions that turn a spec into SDK arguments.

Nothing here touches the network or imports the SDK, so it is cheap to validate at plan time.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import gate, imagedir
from ..base import SandboxSpec
from ..errors import ProviderConfigError, UnsupportedSpecError

# Modal caps a sandbox's life at 24 h; its SDK default (300 s) would kill long rollouts.
MAX_TIMEOUT_S = 24 * 3600
MIN_TIMEOUT_S = 10
# Modal refuses entrypoint argv longer than 2**16 bytes in total (sandbox/_common.py).
MAX_ARGV_BYTES = 2**16
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Comma-separated CIDRs of the cluster's egress (the workers' public addresses), if known.
EGRESS_CIDRS_ENV = "HUD_RAY_EGRESS_CIDRS"
DEFAULT_COMMAND = "python -m hud.environment.server env.py --host 127.0.0.1 --port {port}"


class ModalOptions(BaseModel):
    """`--provider-opt KEY=VALUE` for `--provider modal`."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    sdk: Any = Field(None, description="import path 'pkg.mod:attr' of an object standing in "
                     "for the `modal` module (tests use tests.fakes.modal_fake:sdk); "
                     "default: the real SDK")
    app_name: str = Field("hud-ray", description="Modal app the sandboxes belong to")
    environment: str | None = Field(None, description="Modal environment (else MODAL_ENVIRONMENT)")
    image: str | None = Field(None, description="image when the task names none: a registry tag, "
                              "'modal:NAME[:TAG]', an image id 'im-…', 'py:pkg.mod:attr' or a "
                              "directory with Dockerfile.hud / Dockerfile")
    image_secret: str | None = Field(None, description="Modal secret with registry credentials")
    command: str = Field(DEFAULT_COMMAND, description="env server argv inside the sandbox; "
                         "{port} is filled by the gate, {env_name} from the task")
    python: str = Field("python3", description="interpreter in the image that runs the gate")
    gate_port: int = Field(8765, ge=1, le=65535, description="the gate's port in the sandbox")
    transport: Literal["tls", "tcp"] = Field(
        "tls", description="tls: the gate port is an encrypted_ports tunnel (Modal terminates "
        "TLS with a public certificate, verified here), so the gate secret never crosses the "
        "internet in clear; tcp: an unencrypted_ports tunnel (a raw TCP relay)")
    inner_port: int = Field(0, ge=0, le=65535, description="env server port on 127.0.0.1; "
                            "0 = let it pick and read its HUD_SERVE_PORT= line")
    workdir: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="extra sandbox env vars")
    secrets: list[str] = Field(default_factory=list, description="named Modal secrets to attach")
    region: str | None = None
    inbound_cidr_allowlist: list[str] | None = Field(
        None, description="CIDRs allowed to reach the gate port (defence in depth); default: "
        f"${EGRESS_CIDRS_ENV} (comma-separated), the cluster's egress addresses when known")
    retries: int = Field(4, ge=0, description="retries of a transient SDK error per call")
    backoff_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(20.0, gt=0)
    tunnel_poll_s: int = Field(50, ge=1, le=600, description="timeout of one tunnels() call")

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must be an absolute path inside the sandbox, got {value!r}")
        return value

    @field_validator("env")
    @classmethod
    def _env_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_KEY.match(key):
                raise ValueError(f"env var name {key!r}: only letters, digits and _ are allowed")
            if key == gate.SECRET_ENV:
                raise ValueError(f"{key} is reserved for the gate's secret")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: str) -> str:
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {value!r}: {exc}") from None
        if not argv:
            raise ValueError("must not be empty")
        return value

    @field_validator("inbound_cidr_allowlist")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_cidr(v) for v in value]

    @model_validator(mode="after")
    def _egress_default(self) -> ModalOptions:
        # The callers' (Ray workers') public addresses are known only to whoever runs the
        # cluster (a static NAT); declared once, they close the gate port to everyone else.
        declared = os.environ.get(EGRESS_CIDRS_ENV, "").strip()
        if self.inbound_cidr_allowlist is None and declared:
            try:
                self.inbound_cidr_allowlist = [_cidr(v) for v in declared.split(",") if v.strip()]
            except ValueError as exc:
                raise ValueError(f"${EGRESS_CIDRS_ENV}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _ports(self) -> ModalOptions:
        if self.inner_port == self.gate_port:
            raise ValueError(f"inner_port and gate_port are both {self.gate_port}")
        return self


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR (e.g. 203.0.113.7/32)") from None


def timeout_s(spec: SandboxSpec) -> int:
    """Whole seconds for `Sandbox.create(timeout=)`, from the rollout's deadline."""
    return max(MIN_TIMEOUT_S, math.ceil(spec.lifetime_s))


def check_spec(spec: SandboxSpec, options: ModalOptions) -> None:
    """What Modal cannot give, beyond the resource fields the base class checks."""
    if not (spec.image or options.image):
        raise ProviderConfigError(
            "provider 'modal': no image: set runtime_config.image in the task or "
            "--provider-opt image=REGISTRY_TAG (or modal:NAME, im-ID, py:pkg.mod:attr)"
        )
    if spec.lifetime_s > MAX_TIMEOUT_S:
        raise UnsupportedSpecError(
            f"provider 'modal': a sandbox lives at most {MAX_TIMEOUT_S} s; this rollout needs "
            f"{spec.lifetime_s:.0f} s (runtime_config.limits.run_timeout_s)"
        )
    if gate.SECRET_ENV in spec.env_vars:
        raise ProviderConfigError(f"provider 'modal': env var {gate.SECRET_ENV} is reserved")
    gpu = spec.resources.gpu if spec.resources else None
    if gpu is not None and gpu.count < 1:
        raise UnsupportedSpecError(f"provider 'modal': runtime_config.resources.gpu.count={gpu.count}")
    entrypoint(spec, options)  # too long an argv is a config error, caught before any create


def entrypoint(spec: SandboxSpec, options: ModalOptions) -> list[str]:
    """The sandbox's argv: the gate (shipped as `python3 -c SOURCE`) starting the env server.

    Shipping the source in argv needs no image layer, mount or extra RPC, works with any
    image that has a python3, and keeps the gate's version equal to the client's.
    """
    command = shlex.split(options.command.replace("{env_name}", spec.env_name or ""))
    argv = [options.python, "-c", gate.source(),
            "--port", str(options.gate_port), "--upstream-port", str(options.inner_port),
            "--", *command]
    size = sum(len(a.encode()) for a in argv)
    if size > MAX_ARGV_BYTES:
        raise ProviderConfigError(
            f"provider 'modal': sandbox argv is {size} bytes, Modal allows {MAX_ARGV_BYTES}; "
            "shorten the command option"
        )
    return argv


def resources(spec: SandboxSpec) -> dict[str, Any]:
    """SandboxSpec.resources → Sandbox.create keywords (cpu, memory MiB, gpu 'TYPE[:N]')."""
    res = spec.resources
    if res is None:
        return {}
    out: dict[str, Any] = {}
    if res.cpu is not None:
        out["cpu"] = float(res.cpu)
    if res.memory_mb is not None:
        out["memory"] = int(res.memory_mb)
    if res.gpu is not None:
        kind = res.gpu.type or "any"
        out["gpu"] = kind if res.gpu.count == 1 else f"{kind}:{res.gpu.count}"
    return out


def image_kind(ref: str) -> tuple[str, str]:
    """('dir'|'registry'|'name'|'id'|'definition', value) for an image reference; 'dir' is a
    directory holding Dockerfile.hud / Dockerfile (providers/imagedir.py)."""
    if imagedir.is_image_dir(ref):
        return "dir", ref
    if ref.startswith("modal:"):
        return "name", ref[len("modal:"):]
    if ref.startswith("py:"):
        return "definition", ref[len("py:"):]
    if re.fullmatch(r"im-[A-Za-z0-9]+", ref):
        return "id", ref
    return "registry", ref
