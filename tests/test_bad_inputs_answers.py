"""An agent answer that is not JSON-serialisable is the agent's error, named by type
(issue 16 item 5): one row, not retried, never `env_error`."""

from __future__ import annotations

import asyncio
import math

import pytest

from hud_ray.agents import Session
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, Task

from .fakes.procs import ENVS, RecordingLocal, wait_gone


def _answer(value):
    async def agent(session: Session):
        return value
    return agent


@pytest.mark.parametrize("value, named", [
    ({"a"}, "the agent's answer (set) is not JSON-serialisable: Object of type set"),
    (object(), "the agent's answer (object) is not JSON-serialisable: Object of type object"),
    (math.nan, "the agent's answer (float) is not JSON-serialisable: Out of range float"),
])
def test_answer_that_is_not_json_is_agent_error_naming_the_type(tmp_path, value, named):
    provider = RecordingLocal(env_file=str(ENVS / "bad_grades.py"),
                              state_dir=str(tmp_path / "ledger"), kill_grace_s=0.5)

    async def main():
        try:
            return await run_rollout(Rollout(task=Task(env="bad-grades", id="echo_len")),
                                     _answer(value), provider, RolloutConfig(deadline_s=30))
        finally:
            await provider.close()

    row = asyncio.run(main())
    wait_gone(provider.pids)
    assert row.status is Status.AGENT_ERROR and row.error_type == "UnencodableFrame", row
    assert named in row.error_message, row.error_message
