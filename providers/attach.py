"""`attach`: borrow an env server that is already running at `tcp://host:port`.

Nothing is created or destroyed: every rollout opens its own control session on the
same server (HUD's server keeps one task per session). Useful against `hud serve` on a
dev box or a long-lived shared env.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .base import Capabilities, Endpoint, Provider, SandboxHandle, SandboxSpec
from .errors import EnvStartError

CONNECT_TIMEOUT_S = 2.0


class AttachOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="tcp://host:port of a running env server")

    @field_validator("url")
    @classmethod
    def _tcp_url(cls, value: str) -> str:
        host, _, port = value.removeprefix("tcp://").rpartition(":")
        if not value.startswith("tcp://") or not host or not port.isdigit():
            raise ValueError(f"must look like tcp://host:port, got {value!r}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} is out of range (1-65535) in {value!r}")
        return value


class AttachProvider(Provider):
    name = "attach"
    Options = AttachOptions
    default_create_rate = 1000.0
    default_live_cap = 64
    capabilities = Capabilities(images=False, warm_ahead=False)
    owns_sandboxes = False  # borrowed servers are never destroyed, so never reaped

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options: AttachOptions

    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        return SandboxHandle(
            provider=self.name, sandbox_id=self.options.url, name=spec.name, labels=labels
        )

    async def ready(self, handle: SandboxHandle, timeout_s: float) -> Endpoint:
        """The borrowed server is already running, or it is not coming: a refused
        connection is the answer (not a sandbox still booting), said in seconds."""
        host, _, port = self.options.url.removeprefix("tcp://").rpartition(":")
        try:
            async with asyncio.timeout(min(timeout_s, CONNECT_TIMEOUT_S)):
                _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except ConnectionRefusedError:
            raise EnvStartError(f"provider 'attach': nothing listens at {self.options.url} "
                                "(connection refused): start the env server there "
                                "(e.g. `hud serve env.py --port PORT`)") from None
        except (TimeoutError, OSError):
            # Unreachable or slow: leave it to the wire's readiness budget, which retries.
            return Endpoint(url=self.options.url)
        writer.close()
        return Endpoint(url=self.options.url)

    async def destroy(self, handle: SandboxHandle) -> None:
        """Borrowed: never ours to destroy."""

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        return []
