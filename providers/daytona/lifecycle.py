"""Creating and deleting Daytona sandboxes, with the care the API needs.

Create is not idempotent and a failed or timed-out create may still have made a sandbox:
every retry first looks the deterministic name up and adopts what it finds (or deletes it
when it is broken). A create that timed out with `DaytonaTimeoutError.sandbox_id` set has its
sandbox deleted at once. Deletes wait until the sandbox is gone; "already gone" is success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ProviderConfigError, QuotaError, SandboxError
from .options import DaytonaOptions
from .retry import (
    Backoff,
    Kind,
    as_sandbox_error,
    classify,
    config_error,
    describe,
    exhausted,
    retry_after_s,
)

log = logging.getLogger("providers.daytona")

_DEAD_STATES = {"error", "build_failed", "stopped", "stopping", "archived", "archiving",
                "destroying", "destroyed"}


def sdk_state(obj: Any) -> str:
    """A sandbox's or snapshot's state as a plain string (the SDK mixes enum types)."""
    state = getattr(obj, "state", None)
    return str(getattr(state, "value", state) or "")


class LifecycleMixin:
    """Create/delete half of DaytonaProvider (which supplies the attributes below)."""

    options: DaytonaOptions
    _backoff: Backoff
    _call: Callable[..., Awaitable[Any]]
    _client: Callable[[], Any]

    async def _create_sandbox(self, client: Any, name: str, params: Callable[[], Any]) -> Any:
        o = self.options
        condemned: set[str] = set()
        attempt, look_first = 0, False
        while True:
            if look_first:
                found = await self._find_by_name(client, name)
                if found is not None:
                    adopted = await self._adopt(found, condemned)
                    if adopted is not None:
                        log.info("daytona: adopted sandbox %s (%s) after a failed create",
                                 found.id, name)
                        return adopted
            try:
                return await client.create(params(), timeout=o.create_timeout_s)
            except Exception as exc:
                kind = classify(exc)
                if kind is Kind.CONFIG:
                    raise config_error(exc, o.api_url, o.target) from None
                if kind is Kind.NOT_FOUND:
                    raise ProviderConfigError(
                        f"provider 'daytona': create answered 404 ({describe(exc)}): check "
                        f"DAYTONA_API_URL={o.api_url!r} and option snapshot"
                    ) from None
                timed_out_id = getattr(exc, "sandbox_id", None)
                if timed_out_id:  # created, then timed out starting: it must not live on
                    condemned.add(timed_out_id)
                    await self._delete_quietly(client, timed_out_id)
                last_exc, last_kind = exc, kind
            attempt += 1
            wait = retry_after_s(last_exc)
            if attempt > o.max_retries or (wait is not None and wait > o.retry_after_max_s):
                final = last_kind if last_kind in (Kind.QUOTA, Kind.RETRY) else Kind.FAILED
                raise exhausted(f"create sandbox {name!r}", last_exc, final, attempt, o.api_url)
            # A 429 was refused before anything was made; anything else may have made one.
            look_first = last_kind is not Kind.QUOTA
            delay = self._backoff.delay(attempt, wait)
            log.info("daytona: create %s: %s; retry %d/%d in %.2fs", name, describe(last_exc),
                     attempt, o.max_retries, delay)
            await asyncio.sleep(delay)

    async def _find_by_name(self, client: Any, name: str) -> Any | None:
        try:
            return await self._call(f"get sandbox {name!r}", lambda: client.get(name))
        except (ProviderConfigError, QuotaError, SandboxError):
            raise
        except Exception as exc:
            if classify(exc) is Kind.NOT_FOUND:
                return None
            raise SandboxError(f"provider 'daytona': get {name!r}: {describe(exc)}") from None

    async def _adopt(self, sandbox: Any, condemned: set[str]) -> Any | None:
        """Use a sandbox found under our name, or delete it and return None."""
        state = sdk_state(sandbox)
        if sandbox.id not in condemned and state == "started":
            return sandbox
        if sandbox.id not in condemned and state not in _DEAD_STATES:
            try:  # still creating/starting: give it the create timeout
                await sandbox.wait_for_sandbox_start(timeout=self.options.create_timeout_s)
                return sandbox
            except Exception as exc:
                log.info("daytona: sandbox %s never started: %s", sandbox.id, describe(exc))
        condemned.add(sandbox.id)
        await self._delete_quietly(self._client(), sandbox.id)
        return None

    async def _delete(self, client: Any, sandbox_id: str, sandbox: Any | None = None) -> None:
        """Delete and wait until destroyed; a sandbox already gone is success."""
        first = [sandbox]

        async def attempt() -> None:
            target = first.pop() if first and first[0] is not None else await client.get(sandbox_id)
            first.clear()
            await target.delete(timeout=self.options.delete_timeout_s, wait=True)

        try:
            await self._call(f"delete sandbox {sandbox_id}", attempt,
                             retry_on=(Kind.RETRY, Kind.QUOTA, Kind.TIMEOUT))
        except Exception as exc:
            if classify(exc) is Kind.NOT_FOUND:
                return
            raise SandboxError(
                f"{as_sandbox_error(f'delete sandbox {sandbox_id}', exc)} "
                "(left running until its TTL; its labels let `hud-ray reap` find it)"
            ) from None

    async def _delete_quietly(self, client: Any, sandbox_id: str) -> None:
        try:
            await self._delete(client, sandbox_id)
        except Exception as exc:
            log.warning("daytona: could not delete sandbox %s: %s", sandbox_id, describe(exc))

    async def _delete_by_name(self, client: Any, name: str) -> None:
        with contextlib.suppress(Exception):
            found = await self._find_by_name(client, name)
            if found is not None:
                await self._delete_quietly(client, found.id)
