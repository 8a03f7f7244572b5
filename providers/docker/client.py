"""The async Docker client: aiodocker, one per event loop, and what its errors mean.

aiodocker's session belongs to the loop it was made on, so a provider used from a new loop
(a fresh `asyncio.run`, e.g. `hud-ray reap`) gets a new client. Every call goes through
`call()`, which turns aiodocker's errors into the provider's taxonomy:

- status 900 (aiodocker's "cannot connect") → SandboxError naming DOCKER_HOST (retryable:
  a daemon restart mid-run is infra; at plan time `check_config` stops the run first);
- 404 "No such image" on create → ProviderConfigError (fatal: retrying cannot build it);
- 400 (the daemon refuses the config) → ProviderConfigError;
- anything else (5xx, 409 after our own retry) → CreateError / SandboxError (retryable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import ProviderConfigError, SandboxError
from .daemon import unreachable_hint

T = TypeVar("T")
UNREACHABLE = 900  # aiodocker's status for a connection that failed


def load_aiodocker() -> Any:
    try:
        import aiodocker
    except ImportError as exc:
        raise ProviderConfigError(
            f"provider 'docker' needs the [docker] extra: pip install 'hud-ray[docker]' ({exc})"
        ) from None
    return aiodocker


class DockerClient:
    """aiodocker bound to the running loop, with the error policy above."""

    def __init__(self, docker_host: str) -> None:
        self.docker_host = docker_host
        self._docker: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def docker(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._docker is None or self._loop is not loop:
            aiodocker = load_aiodocker()
            self._docker = aiodocker.Docker(url=self.docker_host)
            self._loop = loop
        return self._docker

    async def close(self) -> None:
        if self._docker is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await self._docker.close()
        self._docker = None

    async def call(self, what: str, fn: Callable[[], Awaitable[T]],
                   fail: type[SandboxError] = SandboxError) -> T:
        from aiodocker.exceptions import DockerError

        try:
            return await fn()
        except DockerError as exc:
            raise self.translate(what, exc, fail) from None

    def translate(self, what: str, exc: Any, fail: type[SandboxError]) -> Exception:
        message = str(getattr(exc, "message", exc)).strip()
        status = getattr(exc, "status", 0)
        if status == UNREACHABLE:
            return fail(f"provider 'docker': {what}: {unreachable_hint(self.docker_host)}")
        if status == 400:
            return ProviderConfigError(f"provider 'docker': {what}: the daemon refused it: "
                                       f"{message}")
        return fail(f"provider 'docker': {what}: [{status}] {message}")

    # --- calls -----------------------------------------------------------------------
    async def create(self, config: dict[str, Any], name: str) -> str:
        container = await self.docker.containers.create(config, name=name)
        return str(container.id)

    async def start(self, container_id: str) -> None:
        await self.docker.containers.container(container_id).start()

    async def inspect(self, container_id: str) -> dict[str, Any]:
        return await self.docker.containers.container(container_id).show()

    async def logs(self, container_id: str, tail: int | None = None) -> list[str]:
        params: dict[str, Any] = {"tail": str(tail)} if tail else {}
        chunks = await self.docker.containers.container(container_id).log(
            stdout=True, stderr=True, **params)
        return "".join(chunks).splitlines()

    async def wait(self, container_id: str) -> None:
        """Until the container has stopped."""
        await self.docker.containers.container(container_id).wait()

    async def port_line(self, container_id: str, pattern: Any) -> int | None:
        """Follow the container's output until a line matches `pattern` (group 1 = port);
        None when the output ends first (the container exited). One streaming request,
        instead of polling the logs, keeps dockerd's CPU for starting containers."""
        from aiodocker.multiplexed import multiplexed_result_stream

        buffer = ""
        # The logs endpoint directly, not container.log(): that inspects the container
        # first to learn whether it has a TTY, and ours never do (one API call less each).
        async with self.docker._query(
                f"containers/{container_id}/logs", method="GET",
                params={"stdout": "1", "stderr": "1", "follow": "1"},
                timeout=None) as response:
            stream = multiplexed_result_stream(response, is_tty=False)
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    buffer += chunk
                    if match := pattern.search(buffer):
                        return int(match.group(1))
                    buffer = buffer[-200:]  # a port line split across chunks still matches
        return None

    async def remove(self, container_id: str) -> bool:
        """Force-remove (SIGKILL, then delete); False when it was already gone."""
        from aiodocker.exceptions import DockerError

        try:
            await self.docker.containers.container(container_id).delete(force=True, v=True)
        except DockerError as exc:
            if exc.status == 404:
                return False
            if exc.status == 409 and "in progress" in str(exc.message):
                return True  # another remover got there first
            raise
        return True

    async def list(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        data = await self.docker._query_json("containers/json", method="GET",
                                             params={"all": "1", "filters": filters})
        return list(data)

    async def has_bridge(self) -> bool:
        networks = await self.docker.networks.list(filters={"driver": "bridge"})
        return any(n.get("Name") == "bridge" for n in networks)


def is_missing_image(exc: Exception) -> bool:
    return getattr(exc, "status", 0) == 404 and "image" in str(getattr(exc, "message", "")).lower()


def is_name_conflict(exc: Exception) -> bool:
    return getattr(exc, "status", 0) == 409
