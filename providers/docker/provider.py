"""DockerProvider: one container per rollout on a Docker daemon.

    create  → container named after the rollout attempt (a leftover of the same name is
              force-removed first), labelled with run / rollout / owner / the governor's
              labels and the creating process, started;
    ready   → the server's port (host network: its HUD_SERVE_PORT= line, or the fixed
              `port`; bridge: the port published on 127.0.0.1), then a wire `hello`; a
              container that exits first fails with its exit code (137 + OOM named) and
              last log lines;
    destroy → force-remove (SIGKILL + delete), idempotent, shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

from .. import probe
from ..base import Capabilities, Endpoint, Provider, SandboxHandle, SandboxSpec, shielded
from ..env_server import start_failure_summary
from ..errors import (
    CreateError,
    EnvStartError,
    NotReadyError,
    ProviderConfigError,
    UnsupportedSpecError,
)
from . import images, owners
from .client import DockerClient, is_missing_image, is_name_conflict, load_aiodocker
from .daemon import Daemon, DaemonUnreachable
from .options import BRIDGE_INNER_PORT, DockerOptions, container_config

PORT_LINE = re.compile(r"HUD_SERVE_PORT=(\d+)[ \t]*\r?\n")  # whole lines only: chunks split
CLASH = re.compile(r"address already in use|errno 98|port is already allocated", re.I)
GPU_RUNTIMES = ("nvidia",)
_DEAD_OWNERS_REAPED: set[str] = set()  # docker hosts swept by this process


class DockerProvider(Provider):
    name = "docker"
    Options = DockerOptions
    # Measured here: create → serving ≈ 0.15-0.18 s, 200 containers ≈ 6.6 MiB each.
    default_create_rate = 20.0
    default_live_cap = 256
    capabilities = Capabilities(images=True, resources={"cpu", "memory_mb", "storage_mb", "gpu"},
                                gpu=True, warm_ahead=True)  # containers are cheap: warm ahead

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options: DockerOptions
        self.client = DockerClient(self.options.docker_host)
        self.daemon = Daemon(self.options.docker_host)
        self._network: str | None = None if self.options.network == "auto" else self.options.network
        self._runtimes: set[str] | None = None
        self._live: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()

    def account(self) -> str:
        """One governor per daemon: runs on one daemon share its live cap."""
        return f"docker-{self.options.docker_host}"

    # --- plan time -------------------------------------------------------------------
    def check_config(self) -> None:
        load_aiodocker()
        self.daemon.ping()
        if self._network is None:
            self._network = "bridge" if self.daemon.has_bridge() else "host"
        if self._network == "host" and self.options.port and self.options.port < 1024:
            raise ProviderConfigError(f"provider 'docker': port={self.options.port} is privileged")
        if self.options.image:
            tag = images.ensure(self.daemon, self.options.image, self.options.pull,
                                self.options.build_args)
            images.command_label(self.daemon, tag)  # a broken label stops the run here

    def check_credentials(self) -> None:
        """The daemon answers (`reap` without --provider skips a machine without one)."""
        load_aiodocker()
        self.daemon.ping()

    def check_spec(self, spec: SandboxSpec) -> None:
        super().check_spec(spec)
        ref = spec.image or self.options.image
        if not ref:
            raise ProviderConfigError(
                "provider 'docker': no image: set runtime_config.image in the task or "
                "--provider-opt image=TAG|DIR (build one: hud-ray image build DIR --tag TAG)")
        res = spec.resources
        if res is not None and res.storage_mb is not None and not self.options.storage_quota:
            raise UnsupportedSpecError(
                "provider 'docker': runtime_config.resources.storage_mb needs a storage driver "
                "with size quotas; if the daemon has one, set --provider-opt storage_quota=true")
        if res is not None and res.gpu is not None:
            if self._runtimes is None:
                self._runtimes = self.daemon.runtimes()
            if not any(r in self._runtimes for r in GPU_RUNTIMES):
                raise UnsupportedSpecError(
                    f"provider 'docker': runtime_config.resources.gpu asked for, but the daemon "
                    f"at {self.options.docker_host} has no GPU runtime (runtimes: "
                    f"{', '.join(sorted(self._runtimes)) or 'none'})")
        if spec.image:
            # A task's own image: built or pulled once per process (cached after), so a
            # missing one stops the run at plan time instead of failing every rollout.
            tag = images.ensure(self.daemon, spec.image, self.options.pull,
                                self.options.build_args)
            images.command_label(self.daemon, tag)

    # --- lifecycle -----------------------------------------------------------------
    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        self._sweep_dead_owners()
        ref = spec.image or self.options.image
        if not ref:
            self.check_spec(spec)  # raises the no-image error
        tag = images.tag_for(str(ref), self.options.build_args)
        network = await self._network_mode()
        port = self.options.port if network == "host" else (self.options.port or BRIDGE_INNER_PORT)
        all_labels = {**self.options.labels, **labels, **owners.owner_labels()}
        config = container_config(spec, self.options, tag, network=network, port=port,
                                  labels=all_labels, command=await self._command(tag))
        try:
            container_id = await self._create(config, spec.name, tag)
        except asyncio.CancelledError:
            # The create may have gone through: remove it by name, off the caller's path.
            self._spawn(self._remove_quietly(spec.name))
            raise
        self._live.add(container_id)
        handle = SandboxHandle(provider=self.name, sandbox_id=container_id, name=spec.name,
                               labels=dict(labels),
                               data={"network": network, "port": port, "image": tag})
        try:
            await self.client.call(f"starting container {spec.name}",
                                   lambda: self.client.start(container_id), fail=CreateError)
        except BaseException as exc:
            await self.destroy(handle)
            if isinstance(exc, CreateError) and CLASH.search(str(exc)):
                raise CreateError(f"{exc} (port clash: another process holds the port)") from None
            raise
        return handle

    async def _create(self, config: dict[str, Any], name: str, tag: str) -> str:
        from aiodocker.exceptions import DockerError

        for attempt in (1, 2):
            try:
                return await self.client.create(config, name)
            except DockerError as exc:
                if is_missing_image(exc):
                    raise ProviderConfigError(
                        f"provider 'docker': image {tag!r} is not on the daemon at "
                        f"{self.options.docker_host} (build it: hud-ray image build DIR --tag "
                        f"{tag}, or give --provider-opt image=DIR)") from None
                if is_name_conflict(exc) and attempt == 1:
                    # A leftover of the same rollout attempt (a resumed run, a create whose
                    # reply was lost): its owner is gone or is us; replace it.
                    await self._remove_quietly(name)
                    continue
                raise self.client.translate(f"creating container {name}", exc, CreateError) from None
        raise AssertionError("unreachable")

    async def ready(self, handle: SandboxHandle, timeout_s: float) -> Endpoint:
        deadline = time.monotonic() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                port = await self._server_port(handle)
                return await self._hello(handle, port, deadline)
        except TimeoutError:
            tail = await self._tail(handle)
            # Still running, yet not serving after the whole startup budget: the env's own
            # start-up hangs (an exit or a dead daemon raised earlier).
            raise EnvStartError(f"container {handle.name} never answered hello within "
                                f"{timeout_s:.1f}s; last output:\n{tail}") from None

    async def _server_port(self, handle: SandboxHandle) -> int:
        """Where the server listens, seen from the host; NotReadyError if it exited."""
        port = int(handle.data.get("port") or 0)
        if handle.data.get("network") == "host" and not port:
            found = await self.client.call(
                f"reading the output of container {handle.name}",
                lambda: self.client.port_line(handle.sandbox_id, PORT_LINE), fail=NotReadyError)
            if found is None:
                # The output ends as the process exits; dockerd may record the exit a moment
                # later: wait for it, so the error carries the exit code.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.client.wait(handle.sandbox_id), 5.0)
                await self._raise_if_exited(handle, "before it printed HUD_SERVE_PORT=<port>")
                raise NotReadyError(f"container {handle.name}: output ended without a "
                                    "HUD_SERVE_PORT= line")
            return found
        if handle.data.get("network") == "host":
            return port
        info = await self._raise_if_exited(handle, "before it served")
        bound = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp")
        if not bound:
            raise NotReadyError(f"container {handle.name}: port {port} is not published")
        return int(bound[0]["HostPort"])

    async def _hello(self, handle: SandboxHandle, port: int, deadline: float) -> Endpoint:
        pause = 0.02
        while True:
            try:
                await probe.hello("127.0.0.1", port, b"", max(0.1, min(2.0, deadline - time.monotonic())))
                return Endpoint(url=f"tcp://127.0.0.1:{port}")
            except probe.WrongAnswer as exc:
                raise NotReadyError(f"container {handle.name}: 127.0.0.1:{port}: {exc}") from None
            except probe.NotYet:
                pass
            await self._raise_if_exited(handle, "before it answered hello")
            await asyncio.sleep(pause)
            pause = min(0.25, pause * 2)

    async def _raise_if_exited(self, handle: SandboxHandle, when: str) -> dict[str, Any]:
        info = await self.client.call(f"inspecting container {handle.name}",
                                      lambda: self.client.inspect(handle.sandbox_id),
                                      fail=NotReadyError)
        state = info.get("State") or {}
        if not state.get("Running"):
            message = await self._exit_message(handle, state, when)
            code = state.get("ExitCode")
            if not state.get("OOMKilled") and isinstance(code, int) and 0 < code < 128:
                # It exited by itself before serving (an import error, a bad command, a
                # fixed port taken): every container of this image would.
                tail = message.split("last output:\n", 1)[-1]
                raise EnvStartError(f"env server failed to start: "
                                    f"{start_failure_summary(tail)} ({message})")
            raise NotReadyError(message)  # killed from outside (OOM, SIGKILL): retried
        return info

    async def destroy(self, handle: SandboxHandle) -> None:
        await shielded(self._destroy(handle))

    async def _destroy(self, handle: SandboxHandle) -> None:
        await self.client.call(f"removing container {handle.name or handle.sandbox_id}",
                               lambda: self.client.remove(handle.sandbox_id))
        self._live.discard(handle.sandbox_id)

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        found = await self.client.call("listing containers", lambda: self.client.list(labels))
        return [SandboxHandle(provider=self.name, sandbox_id=c["Id"],
                              name=(c.get("Names") or ["/"])[0].lstrip("/"),
                              labels=dict(c.get("Labels") or {}),
                              created_at=float(c.get("Created") or time.time()),
                              data={"state": c.get("State")})
                for c in found]

    async def diagnostics(self, handle: SandboxHandle) -> str:
        with contextlib.suppress(Exception):
            info = await self.client.inspect(handle.sandbox_id)
            state = info.get("State") or {}
            if not state.get("Running"):
                # The client saw the socket close first: give dockerd a moment to record
                # the exit (and whether the OOM killer did it).
                return await self._exit_message(handle, state, "mid-rollout")
            return await self._tail(handle)
        return ""

    async def close(self) -> None:
        """Remove what this instance still owns, then close the client."""
        for container_id in list(self._live):
            with contextlib.suppress(Exception):
                await self.destroy(SandboxHandle(provider=self.name, sandbox_id=container_id,
                                                 name=container_id[:12]))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.close()

    # --- helpers ---------------------------------------------------------------------
    async def _command(self, tag: str) -> str | None:
        """The `command` option, else the image's hud-ray.command label (read once per
        tag and process, off the loop), else None: envkit's default."""
        if self.options.command:
            return self.options.command
        try:
            return await asyncio.to_thread(images.command_label, self.daemon, tag)
        except DaemonUnreachable as exc:  # the daemon went away mid-run: infra, retried
            raise CreateError(str(exc)) from None

    async def _network_mode(self) -> str:
        if self._network is None:
            bridge = await self.client.call("listing networks", self.client.has_bridge)
            self._network = "bridge" if bridge else "host"
        return self._network

    async def _exit_message(self, handle: SandboxHandle, state: dict[str, Any], when: str) -> str:
        code = state.get("ExitCode")
        tail = await self._tail(handle)
        if state.get("OOMKilled"):
            why = f"was OOM-killed (exit {code}): over its memory limit"
        elif code == 137:
            why = "was killed (exit 137, SIGKILL)"
        else:
            why = f"exited with code {code}"
        message = f"container {handle.name} {why} {when}"
        if CLASH.search(tail):
            port = handle.data.get("port")
            message += (f"; port clash: 127.0.0.1:{port} is already in use (option port={port}; "
                        "port=0 lets the server pick a free one)")
        return f"{message}; last output:\n{tail}"

    async def _tail(self, handle: SandboxHandle) -> str:
        try:
            lines = await self.client.logs(handle.sandbox_id, self.options.output_lines)
        except Exception as exc:
            return f"(no output: {type(exc).__name__})"
        return "\n".join(lines) or "(no output)"

    async def _remove_quietly(self, name_or_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.remove(name_or_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _sweep_dead_owners(self) -> None:
        """Once per process and daemon: remove containers whose owner on this host died."""
        host = self.options.docker_host
        if not self.options.reap_dead_owners or host in _DEAD_OWNERS_REAPED:
            return
        _DEAD_OWNERS_REAPED.add(host)
        self._spawn(self._remove_dead_owners())

    async def _remove_dead_owners(self) -> None:
        with contextlib.suppress(Exception):
            found = await self.list({owners.LABEL_HOST: owners.owner_labels()[owners.LABEL_HOST]})
            dead = [h for h in found if owners.owner_is_dead(h.labels)]
            await asyncio.gather(*(self.client.remove(h.sandbox_id) for h in dead),
                                 return_exceptions=True)
