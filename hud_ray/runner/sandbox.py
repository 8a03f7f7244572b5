"""A rollout's sandbox lifecycle: a warm sandbox taken over, or provision → ready →
connect (one startup budget for ready + connect); the env's task cancelled on a deadline;
teardown shielded from cancellation, so a sandbox is destroyed even when the caller is
cancelled (and a create grant never used is given back)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from hud_ray.runner.failures import ENV_START_ERROR, RolloutFailure, provider_failure
from hud_ray.runner.spec import rollout_labels, sandbox_spec
from hud_ray.schema import Status
from hud_ray.wire import EnvClient, NeverAnswered, ProtocolError, WireError, WireTimeout
from providers import LABEL_SANDBOX, Endpoint, shielded


class SandboxStagesMixin:
    """The sandbox phases of `RolloutRunner` (state lives on the runner)."""

    async def _use_prepared(self) -> bool:
        """Connect to the warm sandbox; if it died while waiting, drop it and go cold."""
        prepared = self.prepared
        assert prepared is not None
        self.handle, self._sandbox_t0 = prepared.handle, prepared.created_at
        self.timings["provision"] = 0.0
        try:
            await self._connect(prepared.endpoint)
            return True
        except RolloutFailure:
            with contextlib.suppress(Exception):
                await shielded(self.provider.destroy(prepared.handle))
            self.handle, self._sandbox_t0, self.client = None, None, None
            return False

    async def _provision(self) -> None:
        spec = sandbox_spec(self.rollout, self.config, self.deadline_s)
        # The exact sandbox name too: a reap after a worker death must find this attempt's
        # sandbox and never a live retry's.
        labels = {**rollout_labels(self.config, self.rollout.rollout_key),
                  LABEL_SANDBOX: spec.name}
        try:
            self.provider.check_spec(spec)
            self._sandbox_t0 = time.monotonic()
            self.handle = await self.provider.create(spec, labels)
            # One startup budget (limits.startup_timeout_s, else ready_timeout_s) covers
            # ready + connect: an env that never serves fails as infra_error (retryable)
            # instead of eating the whole rollout deadline.
            self._startup_deadline = time.monotonic() + spec.startup_timeout_s
        except Exception as exc:
            raise provider_failure(exc) from None

    async def _ready(self) -> Endpoint:
        assert self.handle is not None
        try:
            return await self.provider.ready(self.handle, self._startup_remaining())
        except Exception as exc:
            raise provider_failure(exc) from None

    async def _connect(self, endpoint: Endpoint) -> None:
        try:
            self.client = await EnvClient.connect(
                endpoint.url,
                preamble=endpoint.preamble,
                ready_timeout_s=self._startup_remaining(),
                call_timeout_s=self._remaining(),
                heartbeat_s=self.config.heartbeat_s,
            )
        except ProtocolError as exc:  # the env answered `hello` wrongly: the wire rule
            raise RolloutFailure(Status.ENV_ERROR, await self._with_output(exc),
                                 error_type=type(exc).__name__) from None
        except NeverAnswered as exc:  # it accepted, then never answered: the env's fault
            raise RolloutFailure(Status.ENV_ERROR, await self._with_output(exc),
                                 error_type=ENV_START_ERROR) from None
        except WireError as exc:  # refused, reset, EOF until the budget ran out: infra
            raise RolloutFailure(Status.INFRA_ERROR, await self._with_output(exc),
                                 error_type=type(exc).__name__) from None

    async def _cancel_task(self) -> None:
        if self.client is not None and self.phase in ("start", "agent", "grade"):
            try:
                await shielded(self.client.cancel(self.config.cancel_timeout_s))
            except WireTimeout:
                self._env_unresponsive = True  # a hung env: don't wait for a bye reply too
            except (WireError, OSError):
                pass

    async def _teardown(self) -> None:
        # Reported to the driver: a rollout in teardown has teardown_timeout_s more to go.
        self._phase_at_end, self.phase = self.phase, "teardown"
        t0 = time.monotonic()
        try:
            # One task (shielded's), its own timeout inside: teardown is on the hot path.
            await shielded(self._release_within(self.config.teardown_timeout_s))
        except TimeoutError:
            self._teardown_error = f"teardown timed out after {self.config.teardown_timeout_s}s"
        except Exception as exc:
            self._teardown_error = f"teardown: {type(exc).__name__}: {exc}"
        finally:
            self.timings["teardown"] = time.monotonic() - t0
            if self._sandbox_t0 is not None:
                self._sandbox_s = time.monotonic() - self._sandbox_t0

    async def _release_within(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self._release()

    async def _release(self) -> None:
        release = getattr(self.provider, "release_grant", None)
        if self.handle is None and release is not None:  # granted, never created
            release(sandbox_spec(self.rollout, self.config, self.deadline_s).name)
        if self.client is not None:
            if self._env_unresponsive:
                await self.client.close()
            else:
                await self.client.bye()
        if self.handle is not None:
            await self.provider.destroy(self.handle)

    async def _with_output(self, exc: Exception) -> str:
        tail = ""
        if self.handle is not None:
            with contextlib.suppress(Exception):
                tail = await asyncio.wait_for(self.provider.diagnostics(self.handle), 2.0)
        return f"{exc}" + (f"\nenv output:\n{tail}" if tail else "")

    def _remaining(self) -> float:
        used = time.monotonic() - self._t0 - self._hold.held_s()  # held: hud_ray.deadline_hold
        return max(0.001, self.deadline_s - used)

    def _startup_remaining(self) -> float:
        if self._startup_deadline is None:
            return self._remaining()
        return max(0.001, min(self._remaining(), self._startup_deadline - time.monotonic()))
