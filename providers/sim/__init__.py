"""`sim`: simulated sandboxes for benchmarks and chaos tests.

Every sandbox is a virtual HUD env inside the provider's process, served by ONE asyncio
listener on 127.0.0.1: `ready()` returns that listener's `tcp://` URL plus a preamble naming
the sandbox, and the real wire client (hello, tasks.start, tasks.grade, tunnel.open) talks
to it like to any env. Cold start, work time and failures are seeded per sandbox name
(see `options.SimOptions`), so a run replays exactly and a retried attempt draws afresh:

    --provider sim --provider-opt cold_start_mu=-1 --provider-opt cold_start_sigma=0.5
                   --provider-opt duration_s=2 --provider-opt crash_rate=0.01

What each failure looks like to a rollout:
  create_fail_rate  create() raises CreateError                  → infra_error
  quota_rate        create() raises QuotaError (a 429)           → quota_error
  live_cap, create_rate  account quota across processes → QuotaError → quota_error
  ready_fail_rate   ready() raises NotReadyError                 → infra_error
  crash_rate        every connection reset at a drawn point of the work time, and
                    the sandbox refuses new ones                  → infra_error
  tunnel_drop_rate  every connection reset once at a drawn point; the sandbox and its
                    task live on (a reconnect with hello{session_id} can grade)
                                                                  → infra_error today
  hang_rate         tasks.grade never answers                     → timeout (grade)
  env_error_rate    tasks.grade answers a JSON-RPC error           → env_error

Grading: score 1.0 iff the answer equals `args["answer"]` (default ""); any template id.
Counters: every create/destroy/quota refusal goes to a per-process log under
`$HUD_RAY_STATE_DIR/sim/<account>/`; `sim_stats(account)` adds them up across processes.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from .ledger import account_dir, read_events, summarize
from .options import Fate, SimOptions
from .provider import SimProvider, flush_all

__all__ = ["Fate", "SimOptions", "SimProvider", "sim_events", "sim_reset", "sim_stats"]


def sim_stats(account: str = "default", state_dir: str | os.PathLike[str] | None = None
              ) -> dict[str, Any]:
    """Totals of one sim account across every process that recorded into `state_dir`
    (default `$HUD_RAY_STATE_DIR/sim`): live, creates, destroys, peak_live (most live at
    once), max_creates_per_s (most creates in any 1 s window), quota_errors,
    create_failures, first/last_create_at (unix seconds). This process's buffered events
    are flushed first; other live processes' destroys are always in, their creates at
    the latest with their first event `flush_s` after their last write."""
    flush_all(account)
    return summarize(read_events(account_dir(account, state_dir)))


def sim_events(account: str = "default", state_dir: str | os.PathLike[str] | None = None,
               kinds: str = "cdqf") -> list[dict[str, Any]]:
    """The account's raw events, oldest first: `{"e": kind, "t": unix_s, "id": ...}` with
    kind c=create (+name, labels), d=destroy, q=quota refusal, f=create failure."""
    flush_all(account)
    return [row for row in read_events(account_dir(account, state_dir)) if row["e"] in kinds]


def sim_reset(account: str = "default", state_dir: str | os.PathLike[str] | None = None) -> None:
    """Forget an account's books (logs and quota). Only for accounts no process is using."""
    shutil.rmtree(account_dir(account, state_dir), ignore_errors=True)
