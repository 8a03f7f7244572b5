"""The SDK seam: which object plays `modal`, and what its errors mean for a rollout.

The provider never names `modal` directly; it calls whatever `load_sdk` returns (the real
module by default, or a stand-in given as an import path, which is how the fake is chosen
from `--provider-opt sdk=tests.fakes.modal_fake:sdk` inside a Ray worker).

Error policy (modal.exception, gRPC status in brackets):
- retried with back-off: ResourceExhaustedError [RESOURCE_EXHAUSTED], ServiceError
  [UNAVAILABLE…], InternalError [INTERNAL], ConnectionError, SandboxTimeoutError;
  ResourceExhaustedError past the budget → QuotaError, the rest → a retryable SandboxError.
- fatal at once → ProviderConfigError naming what to fix: AuthError, PermissionDeniedError,
  InvalidError, ConflictError, ImageBuildError, NotFoundError.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import CreateError, ProviderConfigError, QuotaError, SandboxError

T = TypeVar("T")

RETRYABLE = ("ResourceExhaustedError", "ServiceError", "InternalError", "ConnectionError",
             "SandboxTimeoutError")
FATAL = ("AuthError", "PermissionDeniedError", "InvalidError", "ConflictError",
         "ImageBuildError", "NotFoundError")
CREDENTIALS_HINT = ("set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (or MODAL_PROFILE / a profile "
                    "in ~/.modal.toml; `modal token new` creates one)")


def load_sdk(spec: Any) -> Any:
    """The real `modal` module, or the object at import path `pkg.mod:attr`."""
    if spec is None:
        try:
            import modal  # absolute: the SDK, never this package
        except ImportError as exc:
            raise ProviderConfigError(
                f"provider 'modal' needs the [modal] extra: pip install 'hud-ray[modal]' ({exc})"
            ) from None
        return modal
    if not isinstance(spec, str):
        return spec  # an object handed in directly (in-process use)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ProviderConfigError(
            f"provider 'modal': option sdk={spec!r} must look like 'pkg.module:attribute'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProviderConfigError(f"provider 'modal': option sdk={spec!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ProviderConfigError(
            f"provider 'modal': option sdk={spec!r}: {module_name} has no attribute {attr!r}"
        ) from None


def _modal_config() -> Any:
    try:
        from modal import config as modal_config
    except ImportError:
        return None  # load_sdk names the missing extra
    return modal_config


def _setting(modal_config: Any, key: str) -> Any:
    try:
        return modal_config.config.get(key)
    except KeyError:  # a setting this SDK version does not have
        return None


def check_credentials() -> None:
    """Offline: does the real SDK have credentials (env vars, else the active profile of
    ~/.modal.toml)? Without them a run stops at plan time, naming the variables, instead
    of failing the first create in every worker. Inside a Modal container the SDK
    authenticates itself; OAuth settings are the SDK's to validate."""
    modal_config = _modal_config()
    if modal_config is None:
        return
    if getattr(modal_config, "_is_remote", lambda: False)() or any(
            _setting(modal_config, k) for k in (
            "oauth_refresh_token", "oauth_client_id", "oauth_client_secret", "oauth_jwt_key")):
        return
    missing = [var for var, key in (("MODAL_TOKEN_ID", "token_id"),
                                    ("MODAL_TOKEN_SECRET", "token_secret"))
               if not _setting(modal_config, key)]
    if missing:
        profile = getattr(modal_config, "_profile", "default")
        where = getattr(modal_config, "user_config_path", "~/.modal.toml")
        raise ProviderConfigError(
            f"provider 'modal': no credentials: {' and '.join(missing)} not set (nor in "
            f"profile {profile!r} of {where}) — {CREDENTIALS_HINT}"
        )


# A TCP connect to the API takes one round trip; the SDK itself retries an unreachable
# server for minutes with no message.
REACH_TIMEOUT_S = 5.0


def check_reachable(timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Credentials are no use if the API does not answer: connect (TCP only, no request,
    nothing sent) to the SDK's server URL(s); if none answers within `timeout_s`, fail
    naming them, in seconds, instead of a run hanging on its first create."""
    modal_config = _modal_config()
    if modal_config is None or getattr(modal_config, "_is_remote", lambda: False)():
        return
    urls = [u.strip() for u in str(_setting(modal_config, "server_url") or "").split(",")
            if u.strip()]
    failures: list[str] = []
    for url in urls:
        problem = _tcp_problem(url, timeout_s)
        if problem is None:
            return
        failures.append(f"{url} ({problem})")
    if failures:
        raise ProviderConfigError(
            f"provider 'modal': cannot reach the Modal API at {'; '.join(failures)} — check "
            "the network, a firewall or proxy, and MODAL_SERVER_URL")


def _tcp_problem(url: str, timeout_s: float) -> str | None:
    """None if `url`'s host:port accepts a TCP connection within `timeout_s`, else why not.
    Runs in a thread so a slow DNS lookup is bounded by the same timeout."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    host = parts.hostname or ""
    try:
        port = parts.port or (80 if parts.scheme in ("http", "grpc") else 443)
    except ValueError as exc:
        return f"bad URL: {exc}"
    outcome: list[str | None] = []

    def dial() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or str(exc) or type(exc).__name__)

    thread = threading.Thread(target=dial, daemon=True, name="modal-reach")
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:.0f} s"


class Policy:
    """Runs one SDK call under the error policy above."""

    def __init__(self, sdk: Any, retries: int, backoff_s: float, backoff_max_s: float) -> None:
        self.errors = sdk.exception
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._retryable = tuple(getattr(self.errors, n) for n in RETRYABLE)
        self._fatal = tuple(getattr(self.errors, n) for n in FATAL)

    def delay(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # jitter: concurrent rollouts spread out

    async def call(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        hint: str = "",
        give_up: type[SandboxError] = CreateError,
        deadline: float | None = None,
        passthrough: tuple[str, ...] = (),
    ) -> T:
        """`fn()` with retries; `deadline` (monotonic) bounds them instead of the count.
        Errors named in `passthrough` reach the caller unchanged (e.g. NotFoundError in
        teardown means "already gone", not "misconfigured")."""
        keep = tuple(getattr(self.errors, n) for n in passthrough)
        attempt = 0
        while True:
            try:
                return await fn()
            except keep:
                raise
            except self._fatal as exc:
                raise self.config_error(what, exc, hint) from None
            except self._retryable as exc:
                attempt += 1
                wait = self.delay(attempt)
                out_of_time = deadline is not None and time.monotonic() + wait > deadline
                out_of_tries = deadline is None and attempt > self.retries
                if out_of_time or out_of_tries:
                    message = (f"provider 'modal': {what} failed after {attempt} attempt(s): "
                               f"{type(exc).__name__}: {exc}")
                    if isinstance(exc, self.errors.ResourceExhaustedError):
                        raise QuotaError(message, retry_after_s=wait) from None
                    raise give_up(message) from None
                await asyncio.sleep(wait)

    def config_error(self, what: str, exc: BaseException, hint: str) -> ProviderConfigError:
        name = type(exc).__name__
        e = self.errors
        if isinstance(exc, e.AuthError):
            fix = CREDENTIALS_HINT
        elif isinstance(exc, e.PermissionDeniedError):
            env = os.environ.get("MODAL_ENVIRONMENT")
            fix = (f"check that MODAL_TOKEN_ID/MODAL_TOKEN_SECRET belong to a workspace allowed "
                   f"to use it{f' (MODAL_ENVIRONMENT={env})' if env else ''}")
        else:
            fix = hint or "check the provider options and the task's runtime_config"
        return ProviderConfigError(f"provider 'modal': {what}: {name}: {exc} — {fix}")

    def is_error(self, exc: BaseException, name: str) -> bool:
        return isinstance(exc, getattr(self.errors, name))
