"""Options of the `docker` provider and the pure functions that turn a spec into a container
config (the body of `POST /containers/create`). Nothing here touches the daemon.
"""

from __future__ import annotations

import math
import os
import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..base import SandboxSpec

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# The env server of an image built from a `Dockerfile.hud` like examples/demo's: envkit
# (copied into the image by `hud-ray image build`) serving env.py in the image's WORKDIR.
DEFAULT_COMMAND = "python3 -m hud_ray.envkit env.py --host {host} --port {port}"
# An image says how it serves its env in this label (same placeholders as `command`), e.g.
# a hud env image: LABEL hud-ray.command="python3 -m hud.environment.server env.py
# --host {host} --port {port}". The `command` option, when given, wins.
COMMAND_LABEL = "hud-ray.command"
# In a bridge network the server listens on this port inside its own network namespace.
BRIDGE_INNER_PORT = 8765
MIB = 1024 * 1024


def default_docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "").strip() or DEFAULT_SOCKET


class DockerOptions(BaseModel):
    """`--provider-opt KEY=VALUE` for `--provider docker`."""

    model_config = ConfigDict(extra="forbid")
    docker_host: str = Field(default_factory=default_docker_host,
                             description="daemon address (default: $DOCKER_HOST, else the "
                             "local socket unix:///var/run/docker.sock)")
    image: str | None = Field(None, description="image tag, or a directory holding "
                              "Dockerfile.hud / Dockerfile (built once at plan time); a task's "
                              "runtime_config.image wins")
    build_args: dict[str, str] = Field(default_factory=dict, description="--build-arg values "
                                       "when `image` is a directory (e.g. BASE_IMAGE)")
    command: str | None = Field(None, description="env server argv in the container; "
                                "placeholders {host} {port} {env_name}; default: the image's "
                                f"{COMMAND_LABEL} label, else envkit serving env.py "
                                f"({DEFAULT_COMMAND})")
    workdir: str | None = Field(None, description="working directory (default: the image's)")
    network: Literal["auto", "host", "bridge"] = Field(
        "auto", description="host: the container shares the host's network and its server "
        "binds 127.0.0.1 on a port of its own; bridge: the server's port is published on "
        "127.0.0.1 only; auto: bridge when the daemon has a bridge network, else host")
    port: int = Field(0, ge=0, le=65535, description="host network: the server's port, 0 = "
                      "the server picks a free one and prints HUD_SERVE_PORT=<port> (no "
                      "clash possible); bridge: the port inside the container (0 = 8765)")
    env: dict[str, str] = Field(default_factory=dict, description="extra container env vars")
    labels: dict[str, str] = Field(default_factory=dict, description="extra container labels")
    pids_limit: int = Field(1024, ge=0, description="most processes in one container (0 = none)")
    storage_quota: bool = Field(False, description="the daemon's storage driver supports "
                                "--storage-opt size (overlay2 on xfs with pquota, btrfs, zfs); "
                                "needed for runtime_config.resources.storage_mb")
    privileged: bool = Field(False, description="for nested workspaces (docker in docker)")
    cap_add: list[str] = Field(default_factory=list)
    security_opt: list[str] = Field(default_factory=list)
    shm_size_mb: int | None = Field(None, ge=1)
    pull: Literal["missing", "never"] = Field(
        "missing", description="pull an image the daemon lacks at plan time (missing), or "
        "refuse it (never)")
    output_lines: int = Field(40, ge=1, description="container log lines kept for errors")
    reap_dead_owners: bool = Field(True, description="when the provider starts, remove "
                                   "containers whose owning process on this host has died")

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_command(value)
        return value

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must be an absolute path inside the container, got {value!r}")
        return value


def check_command(value: str) -> None:
    """ValueError naming what is wrong with a command template (option or image label)."""
    try:
        argv = shlex.split(value)
        render(value, host="127.0.0.1", port=1, env_name="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{value!r}: {exc!r}; placeholders are {{host}} {{port}} "
                         "{env_name}") from None
    if not argv:
        raise ValueError("must not be empty")


def render(command: str, *, host: str, port: int, env_name: str) -> list[str]:
    return shlex.split(command.format(host=host, port=port, env_name=env_name))


def resources(spec: SandboxSpec, options: DockerOptions) -> dict[str, Any]:
    """HostConfig limits, as hud's DockerRuntime sets them (cpu, memory, storage) plus pids.
    Memory without swap: a rollout over its limit is OOM-killed (exit 137), not slowed."""
    out: dict[str, Any] = {}
    if options.pids_limit:
        out["PidsLimit"] = options.pids_limit
    res = spec.resources
    if res is None:
        return out
    if res.cpu is not None:
        out["NanoCpus"] = int(res.cpu * 1e9)
    if res.memory_mb is not None:
        out["Memory"] = int(res.memory_mb) * MIB
        out["MemorySwap"] = int(res.memory_mb) * MIB
    if res.storage_mb is not None:
        out["StorageOpt"] = {"size": f"{math.ceil(res.storage_mb)}M"}
    if res.gpu is not None:
        count = res.gpu.count if res.gpu.count > 0 else -1
        out["DeviceRequests"] = [{"Driver": "nvidia", "Count": count,
                                  "Capabilities": [["gpu"]]}]
    return out


def container_config(spec: SandboxSpec, options: DockerOptions, image: str, *,
                     network: str, port: int, labels: dict[str, str],
                     command: str | None = None) -> dict[str, Any]:
    """The create body. Host network: the server binds 127.0.0.1:`port` (0 = it picks).
    Bridge: it binds 0.0.0.0:`port` in its own namespace, published on 127.0.0.1 only.
    `command`: the server's template (the option, else the image's label, else envkit's)."""
    host = "127.0.0.1" if network == "host" else "0.0.0.0"
    template = command or options.command or DEFAULT_COMMAND
    argv = render(template, host=host, port=port, env_name=spec.env_name or "")
    host_config: dict[str, Any] = {
        "NetworkMode": network,
        "Privileged": options.privileged,
        "CapAdd": list(options.cap_add) or None,
        "SecurityOpt": list(options.security_opt) or None,
        **resources(spec, options),
    }
    if options.shm_size_mb:
        host_config["ShmSize"] = options.shm_size_mb * MIB
    config: dict[str, Any] = {
        "Image": image,
        "Cmd": argv,
        "Env": [f"{k}={v}" for k, v in {**options.env, **spec.env_vars,
                                         "PYTHONUNBUFFERED": "1"}.items()],
        "Labels": labels,
        "HostConfig": host_config,
    }
    if network == "bridge":
        config["ExposedPorts"] = {f"{port}/tcp": {}}
        host_config["PortBindings"] = {f"{port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    if options.workdir:
        config["WorkingDir"] = options.workdir
    return config
