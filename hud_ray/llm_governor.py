"""The model endpoint, governed cluster-wide: one named Ray actor per endpoint
(`base_url` + `model`), shared by every worker and driver on the cluster, the way the
sandbox governor is shared per provider account.

It admits each model request under three limits — concurrent requests, requests/min,
tokens/min — and reacts to the endpoint's own 429/503 with AIMD: the request rate is cut
(`decrease_factor`), the rate-limited request waits out the `Retry-After` the endpoint gave
(a long one, `pause_all_after_s` or more, holds every request of the endpoint), and quiet
time adds the rate back linearly up to `rpm`. Requests that got a 429/503 are sent
again by the transport (up to `max_retries_429`), so a sweep at the endpoint's limit loses
no rollout to rate limiting; the time a request waited for admission is the rollout's
`llm_wait_s`.

The agents' side is an httpx transport (`GovernedTransport`) under the `openai` client:
the built-in `openai:MODEL` agent and hud's OpenAI-compatible agents (through the
adapter, as their `model_client`) both go through it. Limits: `--llm-limit KEY=VALUE`
(CLI), `llm_limits:` (sweep file), `llm_limits={...}` (API).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import time
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NAMESPACE = "hud_ray"
RATE_LIMITED = (429, 503)
CATCH_UP_SLOTS = 2
CUT_COOLDOWN_S = 1.0


class LlmPolicy(BaseModel):
    """What one endpoint is allowed; unset = unbounded on that axis."""

    model_config = ConfigDict(extra="forbid")
    max_concurrent: int | None = Field(None, ge=1, description="requests in flight at once")
    rpm: float | None = Field(None, gt=0, description="requests per minute")
    tpm: float | None = Field(None, gt=0, description="tokens (prompt + completion) per minute")
    # Gentler than TCP's halving: the configured rpm is usually the endpoint's documented
    # limit, and pacing right at it meets an occasional 429 from timing jitter alone.
    decrease_factor: float = Field(0.9, gt=0, lt=1, description="AIMD: rate x this on a 429")
    increase_per_s: float | None = Field(
        None, ge=0, description="AIMD: requests/min added back per quiet second (rpm/10)")
    min_rpm: float = Field(1.0, gt=0, description="AIMD floor")
    pace: float = Field(0.975, gt=0, le=1, description="requests are paced at this share of "
                        "rpm: paced right at the limit, timing jitter alone puts one request "
                        "too many into the endpoint's window now and then, and each 429 costs "
                        "a Retry-After pause for everyone")
    default_retry_after_s: float = Field(1.0, ge=0, description="pause after a 429 without "
                                         "a Retry-After header")
    pause_all_after_s: float = Field(
        5.0, ge=0, description="a Retry-After at least this long holds every request of the "
        "endpoint (a quota window, an outage); a shorter one holds the rate-limited request, "
        "while the AIMD cut slows the others")
    max_retries_429: int = Field(8, ge=0, description="times a rate-limited request is sent "
                                 "again before the agent sees the 429")


def endpoint_key(base_url: str | None, model: str) -> str:
    return f"{(base_url or 'https://api.openai.com/v1').rstrip('/')}#{model}"


def governor_name(key: str) -> str:
    return "hud-ray-llm:" + hashlib.sha1(key.encode()).hexdigest()[:16]


class LlmGovernorImpl:
    """The admission logic, without Ray (unit-testable); the actor wraps it."""

    def __init__(self, key: str, policy: dict[str, Any] | LlmPolicy | None = None,
                 clock: Any = time.monotonic) -> None:
        self.key = key
        self.policy = policy if isinstance(policy, LlmPolicy) else LlmPolicy(**(policy or {}))
        self.clock = clock
        self.rate_rpm = self.policy.rpm  # current AIMD rate (None: unbounded)
        self.in_flight = 0
        self.next_slot = 0.0  # earliest time the next request may go (pacing)
        self.paused_until = 0.0  # Retry-After
        self.tokens: deque[tuple[float, int]] = deque()  # (time, tokens) in the last 60 s
        self.last_change = clock()
        self.last_cut = float("-inf")
        self.changed = asyncio.Event()
        self.stats = {"granted": 0, "rate_limited": 0, "waited_s": 0.0}

    def configure(self, policy: dict[str, Any]) -> None:
        self.policy = LlmPolicy(**{**self.policy.model_dump(), **policy})
        self.rate_rpm = self.policy.rpm
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def _recover(self, now: float) -> None:
        policy = self.policy
        if policy.rpm is None or self.rate_rpm is None or self.rate_rpm >= policy.rpm:
            self.last_change = now
            return
        per_s = policy.increase_per_s if policy.increase_per_s is not None else policy.rpm / 10
        self.rate_rpm = min(policy.rpm, self.rate_rpm + per_s * (now - self.last_change))
        self.last_change = now

    def _tokens_in_window(self, now: float) -> int:
        while self.tokens and now - self.tokens[0][0] >= 60.0:
            self.tokens.popleft()
        return sum(t for _, t in self.tokens)

    def wait_needed(self) -> float:
        """Seconds until a request may go now (0: admit); inf while only a release can help."""
        now = self.clock()
        self._recover(now)
        policy = self.policy
        if policy.max_concurrent is not None and self.in_flight >= policy.max_concurrent:
            return float("inf")
        wait = max(0.0, self.paused_until - now)
        if self.rate_rpm is not None:
            wait = max(wait, self.next_slot - now)
        if policy.tpm is not None and self._tokens_in_window(now) >= policy.tpm:
            wait = max(wait, 60.0 - (now - self.tokens[0][0]))
        return wait

    def admit(self) -> None:
        now = self.clock()
        self.in_flight += 1
        self.stats["granted"] += 1
        if self.rate_rpm is not None:
            interval = 60.0 / (self.rate_rpm * self.policy.pace)
            # A grant that wakes a little late keeps its place in the schedule (up to
            # CATCH_UP_SLOTS slots): else every late wake-up pushed the whole schedule back,
            # and requests ran at ~92 % of the rate with no 429 in sight.
            on_schedule = self.next_slot >= now - CATCH_UP_SLOTS * interval
            self.next_slot = (self.next_slot if on_schedule else now) + interval

    async def acquire(self) -> float:
        """Wait for admission; the seconds waited."""
        t0 = self.clock()
        while (wait := self.wait_needed()) > 0:
            changed = self.changed
            if wait == float("inf"):
                await changed.wait()
            else:
                try:  # a release or a reconfigure may shorten the wait
                    await asyncio.wait_for(changed.wait(), wait)
                except TimeoutError:
                    pass
        self.admit()
        waited = self.clock() - t0
        self.stats["waited_s"] += waited
        return waited

    def release(self, tokens: int = 0, status: int | None = None,
                retry_after_s: float | None = None) -> None:
        now = self.clock()
        self.in_flight = max(0, self.in_flight - 1)
        if tokens:
            self.tokens.append((now, int(tokens)))
        if status in RATE_LIMITED:
            self.stats["rate_limited"] += 1
            self._recover(now)
            # One cut per burst of 429s (TCP's one cut per round trip): requests already in
            # flight when the first came back meet the same full window, and cutting for
            # each of them dropped the rate to 0.9^n.
            if self.rate_rpm is not None and now - self.last_cut >= CUT_COOLDOWN_S:
                self.rate_rpm = max(self.policy.min_rpm, self.rate_rpm * self.policy.decrease_factor)
                self.last_cut = now
            pause = retry_after_s if retry_after_s is not None else self.policy.default_retry_after_s
            if pause >= self.policy.pause_all_after_s:
                self.paused_until = max(self.paused_until, now + pause)
                self.next_slot = max(self.next_slot, self.paused_until)
        self._wake()

    def snapshot(self) -> dict[str, Any]:
        return {"key": self.key, "rate_rpm": self.rate_rpm, "in_flight": self.in_flight,
                **self.stats}


def _actor_class() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_concurrency=10_000)
    class LlmGovernor:
        def __init__(self, key: str, policy: dict[str, Any]) -> None:
            self.impl = LlmGovernorImpl(key, policy)

        async def acquire(self) -> float:
            return await self.impl.acquire()

        async def release(self, tokens: int = 0, status: int | None = None,
                          retry_after_s: float | None = None) -> None:
            self.impl.release(tokens, status, retry_after_s)

        async def configure(self, policy: dict[str, Any]) -> None:
            self.impl.configure(policy)

        async def snapshot(self) -> dict[str, Any]:
            return self.impl.snapshot()

    return LlmGovernor


def get_llm_governor(key: str, policy: dict[str, Any]) -> Any:
    """The endpoint's governor, created on first use by whoever asks first (race-free);
    later explicit limits hold on a governor already up."""
    import ray

    from hud_ray.governor import HEAD_NODE_RESOURCE

    actor = _actor_class().options(
        name=governor_name(key), namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True, resources={HEAD_NODE_RESOURCE: 0.001},
    ).remote(key, policy)
    ray.get(actor.configure.remote(policy), timeout=60)
    return actor


# The rollout's accumulator of admission waits (its `llm_wait_s`), set around the agent.
LLM_WAIT: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "hud_ray_llm_wait", default=None)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _usage_tokens(body: bytes) -> int:
    try:
        usage = json.loads(body).get("usage") or {}
    except (ValueError, AttributeError):
        return 0
    return int(usage.get("total_tokens") or (usage.get("prompt_tokens") or 0)
               + (usage.get("completion_tokens") or 0))


def governed_transport(key: str, policy: dict[str, Any]) -> Any:
    """An httpx transport whose every request is admitted by the endpoint's governor."""
    import httpx

    class GovernedTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.policy = LlmPolicy(**policy)
            self._governor: Any = None

        def governor(self) -> Any:
            if self._governor is None:
                self._governor = get_llm_governor(key, policy)
            return self._governor

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            governor = self.governor()
            attempt = 0
            while True:
                waited = await governor.acquire.remote()
                wait_total = LLM_WAIT.get()
                if wait_total is not None:
                    wait_total[0] += waited
                try:
                    response = await self.inner.handle_async_request(request)
                    body = await response.aread()
                except BaseException:
                    governor.release.remote(0, None, None)
                    raise
                if response.status_code in RATE_LIMITED and attempt < self.policy.max_retries_429:
                    attempt += 1
                    retry_after = _retry_after(response.headers)
                    governor.release.remote(0, response.status_code, retry_after)
                    # This request waits out its Retry-After (the governor holds everyone
                    # only for a long one), then queues for admission again.
                    await asyncio.sleep(retry_after if retry_after is not None
                                        else self.policy.default_retry_after_s)
                    continue
                governor.release.remote(_usage_tokens(body), response.status_code,
                                        _retry_after(response.headers))
                # The body is read (decoded) here: its framing headers no longer apply.
                headers = [(k, v) for k, v in response.headers.raw
                           if k.lower() not in (b"content-encoding", b"content-length",
                                                b"transfer-encoding")]
                return httpx.Response(response.status_code, headers=headers, content=body,
                                      request=request, extensions=response.extensions)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return GovernedTransport()


def check_llm_limits(limits: Any) -> dict[str, Any] | None:
    """Validated limits (one clear error naming the setting), or None."""
    if not limits:
        return None
    from pydantic import ValidationError

    try:
        return LlmPolicy(**limits).model_dump(exclude_unset=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        known = ", ".join(LlmPolicy.model_fields)
        raise ValueError(f"llm limit {field!r} (--llm-limit): {err['msg']} (known: {known})") \
            from None
    except TypeError as exc:
        raise ValueError(f"llm limits: {exc}") from None
