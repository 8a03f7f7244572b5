"""How a Daytona SDK error is handled: retried, a quota signal, or a configuration mistake.

The SDK does not retry HTTP errors itself (429 and 5xx get exactly one attempt), so every
API call goes through `call_with_retries`: exponential back-off with jitter that honours
`Retry-After`. Auth, permission and bad-request errors fail fast with a message naming the
setting to fix. Daytona reports exhausted organization limits ("Total CPU limit exceeded")
as a 4xx: those are quota, not configuration — the run should wait, not stop.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import ProviderConfigError, QuotaError, SandboxError

log = logging.getLogger("providers.daytona")
T = TypeVar("T")

_CAPACITY = re.compile(
    r"total\s+(cpu|memory|disk|gpu)\s+limit\s+exceeded"
    r"|(sandbox|resource|concurren\w*|running)\s+(\w+\s+)?(limit|quota)\s+(exceeded|reached)"
    r"|quota\s+exceeded",
    re.IGNORECASE,
)


class Kind(enum.Enum):
    RETRY = "retry"  # 5xx, 408, connection trouble: try again after back-off
    QUOTA = "quota"  # 429 or an exhausted organization limit
    CONFIG = "config"  # 400/401/403/422: nothing to retry, tell the user what to fix
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TIMEOUT = "timeout"  # the SDK's own wait (create/start/delete) ran out
    FAILED = "failed"  # anything else: the sandbox or the call failed for good


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def classify(exc: BaseException) -> Kind:
    from daytona.common.errors import (
        DaytonaConnectionError,
        DaytonaError,
        DaytonaTimeoutError,
    )

    status = status_of(exc)
    if isinstance(exc, DaytonaConnectionError):
        return Kind.RETRY
    if status is None:
        if isinstance(exc, DaytonaTimeoutError):
            return Kind.TIMEOUT
        if isinstance(exc, DaytonaError):
            return Kind.FAILED
        if isinstance(exc, OSError | asyncio.TimeoutError):
            return Kind.RETRY
        return Kind.FAILED
    if status == 429:
        return Kind.QUOTA
    if status in (400, 403, 422) and _CAPACITY.search(str(exc)):
        return Kind.QUOTA
    if status in (400, 401, 403, 422):
        return Kind.CONFIG
    if status == 404:
        return Kind.NOT_FOUND
    if status == 409:
        return Kind.CONFLICT
    if status == 408 or status >= 500:
        return Kind.RETRY
    return Kind.FAILED


def retry_after_s(exc: BaseException) -> float | None:
    """`Retry-After` (seconds or an HTTP date) from the error's response headers."""
    headers = getattr(exc, "headers", None) or {}
    raw = None
    for key, value in dict(headers).items():
        if str(key).lower() == "retry-after":
            raw = str(value).strip()
            break
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def config_error(exc: BaseException, api_url: str | None, target: str | None) -> ProviderConfigError:
    """One clear message naming the setting behind a 4xx."""
    status = status_of(exc)
    url = api_url or "https://app.daytona.io/api (the SDK default)"
    detail = _message(exc)
    if status == 401:
        hint = (
            f"the API key was rejected: set DAYTONA_API_KEY (or --provider-opt api_key=...) to a "
            f"valid key for {url}; DAYTONA_API_URL picks the API"
        )
    elif status == 403:
        hint = (
            "the API key lacks permission for this call (DAYTONA_API_KEY), or the region "
            f"DAYTONA_TARGET={target!r} is not open to the organization"
        )
    else:
        hint = (
            "the API refused the request: check options snapshot / image / resources and "
            f"DAYTONA_TARGET={target!r}"
        )
    return ProviderConfigError(f"provider 'daytona': HTTP {status}: {hint} ({detail})")


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


class Backoff:
    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s = base_s
        self.max_s = max_s

    def delay(self, attempt: int, retry_after: float | None) -> float:
        # Full jitter on the exponential step, so a burst of refused calls spreads out;
        # a server's Retry-After is a floor, never shortened by jitter.
        step = min(self.max_s, self.base_s * (2 ** max(0, attempt - 1)))
        delay = random.uniform(step / 2, step)
        return max(delay, retry_after) if retry_after is not None else delay


async def call_with_retries(
    what: str,
    call: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    backoff: Backoff,
    retry_after_max_s: float,
    api_url: str | None,
    target: str | None,
    retry_on: tuple[Kind, ...] = (Kind.RETRY, Kind.QUOTA),
) -> T:
    """Run `call`; retry transient failures. Raises ProviderConfigError (fatal),
    QuotaError (rate limited past the budget) or SandboxError; NOT_FOUND/CONFLICT/TIMEOUT/
    FAILED errors not listed in `retry_on` propagate unchanged for the caller to handle."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            kind = classify(exc)
            if kind is Kind.CONFIG:
                raise config_error(exc, api_url, target) from None
            if kind not in retry_on:
                raise
            attempt += 1
            wait = retry_after_s(exc)
            if attempt > max_retries or (wait is not None and wait > retry_after_max_s):
                raise exhausted(what, exc, kind, attempt, api_url) from None
            delay = backoff.delay(attempt, wait)
            log.info("daytona %s: %s; retry %d/%d in %.2fs", what, _message(exc), attempt,
                     max_retries, delay)
            await asyncio.sleep(delay)


def exhausted(
    what: str, exc: BaseException, kind: Kind, attempts: int, api_url: str | None
) -> Exception:
    """The error for a call that kept failing."""
    if kind is Kind.QUOTA:
        return QuotaError(
            f"provider 'daytona': {what}: rate limited or over quota after {attempts} "
            f"attempt(s): {_message(exc)}",
            retry_after_s=retry_after_s(exc),
        )
    if status_of(exc) is None and kind is Kind.RETRY:
        url = api_url or "https://app.daytona.io/api"
        return SandboxError(
            f"provider 'daytona': {what}: cannot reach the Daytona API at {url} "
            f"(DAYTONA_API_URL) after {attempts} attempt(s): {_message(exc)}"
        )
    return SandboxError(
        f"provider 'daytona': {what} failed after {attempts} attempt(s): {_message(exc)}"
    )


def describe(exc: Any) -> str:
    return _message(exc)


def as_sandbox_error(what: str, exc: BaseException) -> Exception:
    """Our own errors pass through; anything else becomes a (retryable) SandboxError."""
    if isinstance(exc, ProviderConfigError | QuotaError | SandboxError):
        return exc
    return SandboxError(f"provider 'daytona': {what}: {describe(exc)}")
