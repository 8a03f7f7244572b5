"""Live smoke test against real Modal: runs only with MODAL_TOKEN_ID (and _SECRET) set.

Two demo rollouts (arith, and kv_lookup, whose tunnel.open crosses the gate) in real Modal
sandboxes built from debian_slim + hud_ray's stdlib envkit, then nothing left running.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from hud_ray.agents import resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, iter_tasks
from providers import LABEL_RUN, get_provider
from tests.fakes.procs import DEMO_ENV, DEMO_TASKS

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not os.environ.get("MODAL_TOKEN_ID"),
                       reason="MODAL_TOKEN_ID is not set: live Modal smoke test skipped"),
]


def live_image():
    """Image definition (`image=py:tests.providers.test_modal_live:live_image`)."""
    import modal

    return (modal.Image.debian_slim(python_version="3.11")
            .add_local_python_source("hud_ray", copy=True)
            .add_local_file(str(DEMO_ENV), "/demo/env.py", copy=True))


@pytest.mark.timeout(600)
def test_live_rollouts_on_modal():
    run_id = f"live-{uuid.uuid4().hex[:8]}"
    provider = get_provider(
        "modal", app_name="hud-ray-smoke", image="py:tests.providers.test_modal_live:live_image",
        command="python -m hud_ray.envkit /demo/env.py --host 127.0.0.1 --port {port}")
    picked: dict[str, Rollout] = {}
    for _, task in iter_tasks(DEMO_TASKS):
        if task.id in ("arith", "kv_lookup"):
            picked.setdefault(task.id, Rollout(task=task))
    config = RolloutConfig(run_id=run_id, deadline_s=300, ready_timeout_s=240)

    async def main():
        try:
            rows = await asyncio.gather(*(run_rollout(r, resolve_agent("rule"), provider, config)
                                          for r in picked.values()))
        finally:
            await provider.reap({LABEL_RUN: run_id})  # belt and braces: never leave any
        return rows, await provider.list({LABEL_RUN: run_id})

    rows, left = asyncio.run(main())
    assert [r.status for r in rows] == [Status.OK, Status.OK], [r.error_message for r in rows]
    assert all(r.reward == 1.0 for r in rows)
    assert left == []
