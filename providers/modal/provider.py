"""ModalProvider: lifecycle of one Modal Sandbox per rollout (async `.aio` SDK calls only)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import time
from typing import Any

from .. import gate, imagedir, probe
from ..base import Capabilities, Endpoint, Provider, SandboxHandle, SandboxSpec, shielded
from ..errors import CreateError, NotReadyError
from . import options as opts
from .options import ModalOptions
from .sdk import Policy, check_credentials, check_reachable, load_sdk

GONE = ("NotFoundError",)


class ModalProvider(Provider):
    name = "modal"
    Options = ModalOptions
    # 5 creates/s was seen on default accounts (notes/modal.md); the governor may raise it.
    default_create_rate = 5.0
    default_live_cap = 100
    capabilities = Capabilities(images=True, resources={"cpu", "memory_mb", "gpu"}, gpu=True,
                                warm_ahead=False)  # idle sandboxes are billed: opt in with --warm

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.options: ModalOptions
        self._sdk: Any = None
        self._policy: Policy | None = None
        self._app: Any = None
        self._app_lock = asyncio.Lock()
        self._image_ids: dict[str, str] = {}
        self._image_locks: dict[str, asyncio.Lock] = {}
        # Gate secrets live only in this process's memory, keyed by sandbox name: a retried
        # create reuses the secret, and nothing secret reaches handles, tags, names or logs.
        self._secrets: dict[str, str] = {}
        self._sandboxes: dict[str, Any] = {}

    def account(self) -> str:
        """Quota key for a governor: the token's id (hashed) and environment, so two runs
        on one Modal workspace share one create-rate budget."""
        token = os.environ.get("MODAL_TOKEN_ID") or os.environ.get("MODAL_PROFILE") or "default"
        env = self.options.environment or os.environ.get("MODAL_ENVIRONMENT") or ""
        return "modal-" + hashlib.sha1(f"{token}/{env}".encode()).hexdigest()[:12]

    # --- SDK, app, image: resolved once per process --------------------------------
    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            self._sdk = load_sdk(self.options.sdk)
            o = self.options
            self._policy = Policy(self._sdk, o.retries, o.backoff_s, o.backoff_max_s)
        return self._sdk

    @property
    def policy(self) -> Policy:
        self.sdk  # noqa: B018 - loads the SDK and builds the policy
        assert self._policy is not None
        return self._policy

    async def app(self) -> Any:
        async with self._app_lock:
            if self._app is None:
                o = self.options
                self._app = await self.policy.call(
                    f"looking up app {o.app_name!r}",
                    lambda: self.sdk.App.lookup.aio(
                        o.app_name, create_if_missing=True, environment_name=o.environment),
                    hint=f"check option app_name={o.app_name!r} and environment / MODAL_ENVIRONMENT",
                )
        return self._app

    async def image(self, ref: str) -> Any:
        """Resolve `ref` to an image id once (concurrent rollouts never race a build)."""
        lock = self._image_locks.setdefault(ref, asyncio.Lock())
        async with lock:
            if ref not in self._image_ids:
                self._image_ids[ref] = await self._resolve_image(ref)
        return self.sdk.Image.from_id(self._image_ids[ref])

    async def _resolve_image(self, ref: str) -> str:
        sdk, o = self.sdk, self.options
        kind, value = opts.image_kind(ref)
        if kind == "id":
            return value
        if kind == "name":
            image = sdk.Image.from_name(value, environment_name=o.environment)
        elif kind == "dir":
            return await self._build_from_dir(value)
        elif kind == "definition":
            image = load_sdk(value)  # same import-path rules as the sdk option
            image = image() if callable(image) else image
        else:
            secret = (sdk.Secret.from_name(o.image_secret, environment_name=o.environment)
                      if o.image_secret else None)
            image = sdk.Image.from_registry(value, secret=secret)
        app = await self.app()
        await self.policy.call(
            f"building image {ref!r}", lambda: image.build.aio(app),
            hint=f"fix the image {ref!r} (runtime_config.image or option image)"
                 + (f" or the registry secret {o.image_secret!r}" if o.image_secret else ""),
        )
        return image.object_id

    async def _build_from_dir(self, directory: str) -> str:
        """`Image.from_dockerfile` on the directory's context staged with `.hud-ray/`
        (the same context `hud-ray image build` sends the local daemon)."""
        staged = imagedir.stage(directory)
        try:
            dockerfile = imagedir.dockerfile(staged)
            image = self.sdk.Image.from_dockerfile(str(dockerfile), context_dir=str(staged))
            app = await self.app()
            await self.policy.call(
                f"building image from {dockerfile.name} in {directory!r}",
                lambda: image.build.aio(app),
                hint=f"fix {directory}/{dockerfile.name} (option image / runtime_config.image)")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return image.object_id

    # --- plan time -----------------------------------------------------------------
    def check_config(self) -> None:
        if self.options.sdk is None:  # a stand-in SDK (the fake) brings its own auth
            check_credentials()  # offline: before the task scan

    def check_credentials(self) -> None:
        self.check_config()
        if self.options.sdk is None:
            check_reachable()  # one TCP connect: after everything offline has passed

    def check_spec(self, spec: SandboxSpec) -> None:
        super().check_spec(spec)
        opts.check_spec(spec, self.options)

    # --- lifecycle -------------------------------------------------------------------
    async def create(self, spec: SandboxSpec, labels: dict[str, str]) -> SandboxHandle:
        self.check_spec(spec)
        o, sdk = self.options, self.sdk
        app = await self.app()
        image = await self.image(spec.image or o.image or "")
        secret = self._secrets.setdefault(spec.name, secrets.token_urlsafe(32))
        named = [sdk.Secret.from_name(n, environment_name=o.environment) for n in o.secrets]
        kwargs: dict[str, Any] = dict(
            app=app, image=image, name=spec.name, tags=dict(labels),
            env={**o.env, **spec.env_vars},
            secrets=[sdk.Secret.from_dict({gate.SECRET_ENV: secret}), *named],
            timeout=opts.timeout_s(spec),
            **{"encrypted_ports" if o.transport == "tls" else "unencrypted_ports": [o.gate_port]},
            **opts.resources(spec),
        )
        for key in ("workdir", "region", "inbound_cidr_allowlist"):
            if getattr(o, key) is not None:
                kwargs[key] = getattr(o, key)
        argv = opts.entrypoint(spec, o)
        sent = False

        async def create_once() -> Any:
            nonlocal sent
            try:
                ours, sent = sent, True
                return await sdk.Sandbox.create.aio(*argv, **kwargs)
            except sdk.exception.AlreadyExistsError:
                return await self._existing(spec.name, ours, lambda: sdk.Sandbox.create.aio(*argv, **kwargs))

        try:
            sb = await self.policy.call(
                f"creating sandbox {spec.name}", create_once,
                hint="check the image, resources and options (workdir, region, secrets)",
            )
        except BaseException:
            self._secrets.pop(spec.name, None)
            raise
        self._sandboxes[sb.object_id] = sb
        return SandboxHandle(
            provider=self.name, sandbox_id=sb.object_id, name=spec.name, labels=dict(labels),
            data={"app_id": app.app_id, "app_name": o.app_name, "gate_port": o.gate_port,
                  "startup_timeout_s": spec.startup_timeout_s},
        )

    async def _existing(self, name: str, ours: bool, create: Any) -> Any:
        """The name is taken. Ours (an earlier try whose reply was lost): re-attach. A
        stranger (an orphan of a crashed run reusing the name) holds a secret we never
        knew: terminate it and create afresh."""
        o, sdk = self.options, self.sdk
        try:
            found = await sdk.Sandbox.from_name.aio(o.app_name, name,
                                                     environment_name=o.environment)
        except sdk.exception.NotFoundError:
            found = None  # it ended between the two calls: the name is free again
        if ours and found is not None:
            return found
        if found is not None:
            await found.terminate.aio(wait=True)
        try:
            return await create()
        except sdk.exception.AlreadyExistsError:
            raise CreateError(f"provider 'modal': sandbox name {name} is still taken") from None

    async def ready(self, handle: SandboxHandle, timeout_s: float) -> Endpoint:
        budget = min(timeout_s, float(handle.data.get("startup_timeout_s") or timeout_s))
        deadline = time.monotonic() + budget
        secret = self._secrets.get(handle.name)
        if secret is None:
            raise NotReadyError(f"sandbox {handle.sandbox_id}: its gate secret is held only by "
                                "the process that created it")
        sb = await self._sandbox(handle)
        host, port = await self._tunnel(sb, handle, deadline, budget)
        preamble = gate.frame(secret)
        await self._hello(sb, handle, host, port, preamble, deadline, budget)
        return Endpoint(url=f"{self.options.transport}://{host}:{port}", preamble=preamble)

    async def _tunnel(self, sb: Any, handle: SandboxHandle, deadline: float,
                      budget: float) -> tuple[str, int]:
        port = int(handle.data.get("gate_port", self.options.gate_port))

        async def tunnels() -> dict[int, Any]:
            left = max(1, min(self.options.tunnel_poll_s, int(deadline - time.monotonic())))
            return await sb.tunnels.aio(timeout=left)

        try:
            found = await self.policy.call(
                f"waiting for the tunnel of sandbox {handle.sandbox_id}", tunnels,
                give_up=NotReadyError, deadline=deadline)
        except NotReadyError as exc:
            raise NotReadyError(f"{exc} (no tunnel within {budget:.1f}s)"
                                f"{await self._tail(handle)}") from None
        except self.sdk.exception.Error as exc:  # e.g. SandboxTerminatedError: it ended
            raise NotReadyError(f"sandbox {handle.sandbox_id}: {type(exc).__name__}: {exc}"
                                f"{await self._tail(handle)}") from None
        if port not in found:
            raise NotReadyError(f"sandbox {handle.sandbox_id} has no tunnel for port {port} "
                                f"(tunnels: {sorted(found)})")
        tunnel = found[port]
        return tunnel.tls_socket if self.options.transport == "tls" else tunnel.tcp_socket

    async def _hello(self, sb: Any, handle: SandboxHandle, host: str, port: int,
                     preamble: bytes, deadline: float, budget: float) -> None:
        last: Exception | None = None
        pause = 0.1
        while (left := deadline - time.monotonic()) > 0:
            try:
                await probe.hello(host, port, preamble, min(5.0, left),
                                  tls=probe.tls_context() if self.options.transport == "tls"
                                  else None)
                return
            except probe.WrongAnswer as exc:
                raise NotReadyError(f"sandbox {handle.sandbox_id}: {exc}") from None
            except probe.NotYet as exc:
                last = exc
            code = await self.policy.call("polling the sandbox", sb.poll.aio,
                                          give_up=NotReadyError, deadline=deadline)
            if code is not None:
                raise NotReadyError(f"sandbox {handle.sandbox_id} exited with code {code} before "
                                    f"its env answered hello{await self._tail(handle)}")
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(1.0, pause * 2)
        hint = ("; the gate learns the env's port from its HUD_SERVE_PORT= line — if the "
                "command prints none, set --provider-opt inner_port=PORT"
                if not self.options.inner_port else "")
        raise NotReadyError(f"sandbox {handle.sandbox_id}: env did not answer hello through the "
                            f"gate at {host}:{port} within {budget:.1f}s (last: {last}){hint}")

    async def destroy(self, handle: SandboxHandle) -> None:
        await shielded(self._destroy(handle))

    async def _destroy(self, handle: SandboxHandle) -> None:
        sdk = self.sdk
        self._secrets.pop(handle.name, None)
        sb = self._sandboxes.pop(handle.sandbox_id, None)
        try:
            if sb is None:
                sb = await self.policy.call(
                    "finding the sandbox to terminate",
                    lambda: sdk.Sandbox.from_id.aio(handle.sandbox_id), passthrough=GONE)
            await self.policy.call(f"terminating sandbox {handle.sandbox_id}", sb.terminate.aio,
                                   passthrough=GONE)
        except sdk.exception.NotFoundError:
            return  # already gone: destroy is idempotent

    async def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        app = await self.app()
        found: list[SandboxHandle] = []

        async def collect() -> None:
            found.clear()
            async for sb in self.sdk.Sandbox.list.aio(app_id=app.app_id, tags=dict(labels)):
                found.append(SandboxHandle(
                    provider=self.name, sandbox_id=sb.object_id, name="", labels=dict(labels),
                    data={"app_id": app.app_id, "app_name": self.options.app_name}))

        await self.policy.call("listing sandboxes", collect)
        return found

    async def diagnostics(self, handle: SandboxHandle) -> str:
        return (await self._tail(handle)).strip()

    async def close(self) -> None:
        self._sandboxes.clear()
        self._secrets.clear()

    # --- helpers -------------------------------------------------------------------
    async def _sandbox(self, handle: SandboxHandle) -> Any:
        sb = self._sandboxes.get(handle.sandbox_id)
        if sb is None:
            sb = await self.policy.call(
                f"finding sandbox {handle.sandbox_id}",
                lambda: self.sdk.Sandbox.from_id.aio(handle.sandbox_id), give_up=NotReadyError)
            self._sandboxes[handle.sandbox_id] = sb
        return sb

    async def _tail(self, handle: SandboxHandle, lines: int = 30) -> str:
        """Exit code and last output lines of a finished sandbox; '' while it runs (reading
        a running sandbox's stdout would block until it ends)."""
        with contextlib.suppress(Exception):
            sb = await self._sandbox(handle)
            code = await asyncio.wait_for(sb.poll.aio(), 5.0)
            if code is None:
                return ""
            parts = []
            for stream in (sb.stdout, sb.stderr):
                text = await asyncio.wait_for(stream.read.aio(), 5.0)
                parts.extend(str(text).splitlines()[-lines:])
            return f"\nsandbox exited with code {code}; last output:\n" + "\n".join(parts)
        return ""
