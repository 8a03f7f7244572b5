"""What earlier driver starts left alive, found and destroyed when a driver starts.

The governor's ledger lives in Ray; a driver that started a private Ray takes that ledger
with it when it dies (kill -9), so a later driver cannot count on it. The durable record is
the provider's own: its labels (run, incarnation, driver) and, for `local`, the on-disk
ledger in the state dir. Before its first rollout a driver lists the sandboxes of its run
(every provider) and, where listing costs no cloud call (`Provider.sweep_all_on_start`),
those of every run, and for each incarnation other than its own:

- its driver is proved dead (same host, pid gone or recycled) → destroyed;
- its driver is alive → left alone (another live start of the run id, elsewhere);
- its driver cannot be judged (another host, no driver label) → named, with the exact
  `hud-ray reap` command, and left alone (a resume of this run destroys its own, below).

A `--resume` owns its run: anything of the run not this incarnation's and not held by a
provably live driver is destroyed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from typing import Any

from hud_ray.incarnation import driver_alive
from providers import (
    LABEL_DRIVER,
    LABEL_INCARNATION,
    LABEL_OWNER,
    LABEL_RUN,
    SandboxHandle,
    get_provider,
)

log = logging.getLogger("hud_ray.scheduler")


def sweep_leftovers(provider_name: str, options: dict[str, Any], run_id: str,
                    incarnation: str, owner: str, *, resume: bool,
                    timeout_s: float = 120.0) -> int:
    """Destroy what dead incarnations left (see the module doc); returns how many.
    Runs in a thread of its own: the caller may sit in a running event loop (notebook)."""
    result: list[int] = []

    def go() -> None:
        result.append(asyncio.run(_sweep(provider_name, options, run_id, incarnation,
                                         owner, resume)))

    thread = threading.Thread(target=go, name="hud-ray-leftovers", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.warning("looking for sandboxes earlier runs left took over %.0f s; going on "
                    "(`hud-ray reap --provider %s` finds them later)", timeout_s, provider_name)
    return result[0] if result else 0


async def _sweep(provider_name: str, options: dict[str, Any], run_id: str,
                 incarnation: str, owner: str, resume: bool) -> int:
    provider = get_provider(provider_name, **options)
    try:
        handles = await provider.list({LABEL_RUN: run_id})
        if provider.sweep_all_on_start:
            seen = {h.sandbox_id for h in handles}
            handles += [h for h in await provider.list({LABEL_OWNER: owner})
                        if h.sandbox_id not in seen]
        doomed, unknown = _judge(handles, run_id, incarnation, resume)
        for handle in doomed:
            try:
                await provider.destroy(handle)
            except Exception as exc:  # `hud-ray reap` can finish the job
                log.warning("destroying %s left by a dead driver failed: %s",
                            handle.sandbox_id, exc)
        if doomed:
            log.warning("destroyed %d sandbox(es) that dead driver(s) left alive", len(doomed))
        for (run, inc), count in sorted(unknown.items()):
            log.warning("%d sandbox(es) of run %s (incarnation %s) may be orphans: their "
                        "driver cannot be checked from here; if it is gone: hud-ray reap "
                        "--provider %s --run-id %s", count, run, inc or "?", provider_name, run)
        return len(doomed)
    except Exception as exc:  # never stop a run for this: say what to do instead
        log.warning("could not look for sandboxes earlier runs left (%s: %s); "
                    "`hud-ray reap --provider %s --run-id %s` finds them",
                    type(exc).__name__, exc, provider_name, run_id)
        return 0
    finally:
        await provider.close()


def _judge(handles: list[SandboxHandle], run_id: str, incarnation: str,
           resume: bool) -> tuple[list[SandboxHandle], dict[tuple[str, str], int]]:
    """(to destroy, {(run, incarnation): count} that cannot be judged)."""
    doomed: list[SandboxHandle] = []
    unknown: dict[tuple[str, str], int] = defaultdict(int)
    for handle in handles:
        labels = handle.labels
        if labels.get(LABEL_INCARNATION) == incarnation:
            continue  # ours (none exist yet; a retried start would find them here)
        driver = labels.get(LABEL_DRIVER)
        alive = driver_alive(driver) if driver else None
        if alive is False or (alive is None and resume and labels.get(LABEL_RUN) == run_id):
            doomed.append(handle)
        elif alive is None:
            unknown[(labels.get(LABEL_RUN, "?"), labels.get(LABEL_INCARNATION, ""))] += 1
    return doomed, unknown
