"""Options of the `sim` provider and the seeded per-sandbox draws ("fates").

Every option arrives as a `--provider-opt KEY=VALUE` string; pydantic's lax mode turns
"0.5" into 0.5 and "false" into False. A sandbox's fate is a pure function of
`(seed, sandbox name)`: the same run replays the same failures, while a retried attempt
(a new name, see `providers.base.sandbox_name`) gets a fresh draw.
"""

from __future__ import annotations

import hashlib
import math
import struct
from statistics import NormalDist
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..base import attempt_name

Rate = Field(0.0, ge=0.0, le=1.0)
_NORMAL = NormalDist()
_U32 = struct.Struct("<16I")
_TWO32 = 4294967296.0


class SimOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # identity and bookkeeping
    account: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                         description="sandboxes, counters and quota are shared per account")
    seed: int = 0
    state_dir: str | None = Field(None, description="holds <account>/ (default $HUD_RAY_STATE_DIR/sim)")
    record: bool = Field(True, description="append create/destroy events to the account log")
    flush_s: float = Field(0.25, ge=0.0, description="write buffered creates and quota events with "
                           "the first event this long after the last write (and on list, "
                           "close, exit); destroys are written at once; 0 = write each")
    host: str = "127.0.0.1"

    # time: cold start (create → ready) and the template's work (tasks.start → grade reply)
    cold_start_s: float = Field(0.0, ge=0.0, description="fixed cold start")
    cold_start_mu: float | None = Field(None, description="lognormal cold start: log-seconds mean")
    cold_start_sigma: float = Field(0.0, ge=0.0)
    cold_start_max_s: float | None = Field(None, ge=0.0)
    duration_s: float = Field(0.0, ge=0.0, description="fixed rollout work time inside the env")
    duration_mu: float | None = None
    duration_sigma: float = Field(0.0, ge=0.0)
    duration_max_s: float | None = Field(None, ge=0.0)
    work_in: Literal["grade", "start"] = Field(
        "grade", description="grade: the grade reply waits until start + duration; "
        "start: the start reply itself takes the duration")

    # failures (each an independent per-sandbox draw)
    create_fail_rate: float = Rate
    quota_rate: float = Rate
    quota_retry_after_s: float = Field(1.0, ge=0.0)
    ready_fail_rate: float = Rate
    crash_rate: float = Rate
    hang_rate: float = Rate
    tunnel_drop_rate: float = Rate
    env_error_rate: float = Rate

    # account quota, shared by every process using the same account and state dir
    live_cap: int | None = Field(None, ge=1)
    create_rate: float | None = Field(None, gt=0.0, description="token bucket, creates per second")
    create_burst: float | None = Field(None, ge=1.0, description="bucket size (default max(1, rate))")

    @model_validator(mode="after")
    def _caps(self) -> SimOptions:
        if self.create_burst is not None and self.create_rate is None:
            raise ValueError("create_burst needs create_rate")
        return self


class Fate:
    """Everything random about one sandbox, drawn once at create."""

    __slots__ = ("cold_start_s", "crash", "crash_frac", "create_fail", "drop_frac",
                 "duration_s", "env_error", "hang", "quota", "ready_fail", "tunnel_drop")

    def __init__(self, options: SimOptions, name: str) -> None:
        FateModel(options).draw_into(self, name)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Fate({fields})"


class FateModel:
    """Options pre-digested for the hot path: rates as 32-bit thresholds, so a draw is one
    hash, one unpack and integer compares (≈ 2 µs)."""

    def __init__(self, options: SimOptions) -> None:
        o = self.options = options
        self.prefix = f"{o.seed}\x00".encode()
        self.thresholds = tuple(round(r * _TWO32) for r in (
            o.create_fail_rate, o.quota_rate, o.ready_fail_rate, o.crash_rate, o.hang_rate,
            o.tunnel_drop_rate, o.env_error_rate))

    def draw(self, name: str) -> Fate:
        fate = Fate.__new__(Fate)
        self.draw_into(fate, name)
        return fate

    def draw_into(self, fate: Fate, name: str) -> None:
        # By the rollout attempt, not the incarnation: a rerun of a run meets the same fates.
        stable = attempt_name(name).encode()
        k = _U32.unpack(hashlib.blake2b(self.prefix + stable, digest_size=64).digest())
        t = self.thresholds
        o = self.options
        fate.create_fail, fate.quota, fate.ready_fail = k[0] < t[0], k[1] < t[1], k[2] < t[2]
        fate.crash, fate.hang, fate.tunnel_drop = k[3] < t[3], k[4] < t[4], k[5] < t[5]
        fate.env_error = k[6] < t[6]
        fate.cold_start_s = _draw(o.cold_start_s, o.cold_start_mu, o.cold_start_sigma,
                                  o.cold_start_max_s, k[7])
        fate.duration_s = _draw(o.duration_s, o.duration_mu, o.duration_sigma,
                                o.duration_max_s, k[8])
        # where in the work time a crash / drop happens, uniform in (0, 1)
        fate.crash_frac = (k[9] + 0.5) / _TWO32
        fate.drop_frac = (k[10] + 0.5) / _TWO32


def _draw(fixed: float, mu: float | None, sigma: float, cap: float | None, k: int) -> float:
    if mu is None:
        value = fixed
    elif sigma:
        value = math.exp(mu + sigma * _NORMAL.inv_cdf((k + 0.5) / _TWO32))
    else:
        value = math.exp(mu)
    return min(value, cap) if cap is not None else value
