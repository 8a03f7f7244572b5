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
    flush_s: float = Field(0.25, ge=0.0, description="max age of buffered events; 0 = write each")
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
        digest = hashlib.blake2b(f"{options.seed}\x00{name}".encode(), digest_size=64).digest()
        u = [(k + 0.5) / _TWO32 for k in _U32.unpack(digest)]  # 16 uniforms in (0, 1)
        o = options
        self.create_fail = u[0] < o.create_fail_rate
        self.quota = u[1] < o.quota_rate
        self.ready_fail = u[2] < o.ready_fail_rate
        self.crash = u[3] < o.crash_rate
        self.hang = u[4] < o.hang_rate
        self.tunnel_drop = u[5] < o.tunnel_drop_rate
        self.env_error = u[6] < o.env_error_rate
        self.cold_start_s = _draw(o.cold_start_s, o.cold_start_mu, o.cold_start_sigma,
                                  o.cold_start_max_s, u[7])
        self.duration_s = _draw(o.duration_s, o.duration_mu, o.duration_sigma,
                                o.duration_max_s, u[8])
        self.crash_frac = u[9]  # where in the work time the crash / drop happens
        self.drop_frac = u[10]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Fate({fields})"


def _draw(fixed: float, mu: float | None, sigma: float, cap: float | None, u: float) -> float:
    if mu is None:
        value = fixed
    else:
        value = math.exp(mu + sigma * _NORMAL.inv_cdf(u)) if sigma else math.exp(mu)
    return min(value, cap) if cap is not None else value
