"""hud_ray.rollout with the local provider: real env-server subprocesses, one asyncio process.

Every way a rollout can fail must come back as a row with the right status (and the
sandbox process gone), never as an exception — except an outside cancellation, which
tears the sandbox down and then propagates.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from hud_ray.agents import Session, resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import RolloutResult, Status
from hud_ray.tasks import Rollout, Task, expand, iter_tasks
from providers.local import LocalProvider

from .fakes.procs import (
    DEMO_ENV,
    DEMO_TASKS,
    ENVS,
    RecordingLocal,
    alive,
    async_wait_until,
    wait_gone,
)

SOLVED = {"count", "arith", "reverse", "sort", "kv_lookup"}




def rollout_of(template: str, args: dict[str, Any] | None = None, **row: Any) -> Rollout:
    return Rollout(task=Task(env="faulty", id=template, args=args or {}, **row))


def one(rollout: Rollout, agent: Any, provider: LocalProvider, **config: Any) -> RolloutResult:
    return asyncio.run(run_rollout(rollout, resolve_agent(agent), provider, RolloutConfig(**config)))


# --- the demo: 50 rollouts, one process ---------------------------------------------------


def test_fifty_demo_rollouts_one_row_each_rewards_exactly_what_the_rule_agent_solves(tmp_path):
    rollouts = list(expand(itertools.islice(iter_tasks(DEMO_TASKS), 50)))
    provider = RecordingLocal(env_file=str(DEMO_ENV), state_dir=str(tmp_path / "ledger"))

    async def main() -> list[RolloutResult]:
        agent = resolve_agent("rule")
        config = RolloutConfig(run_id="demo50", deadline_s=60)
        return await asyncio.gather(*(run_rollout(r, agent, provider, config) for r in rollouts))

    t0 = time.monotonic()
    rows = asyncio.run(main())
    elapsed = time.monotonic() - t0

    assert len(rows) == 50
    assert [r.rollout_key for r in rows] == [r.rollout_key for r in rollouts]
    assert len({r.rollout_key for r in rows}) == 50 and len({r.sandbox_id for r in rows}) == 50
    templates = collections.Counter(r.template_id for r in rows)
    assert set(templates) == SOLVED | {"riddle"}, templates
    for row in rows:
        assert row.status is Status.OK, (row.rollout_key, row.error_message)
        assert row.reward == (1.0 if row.template_id in SOLVED else 0.0), row
        assert row.run_id == "demo50" and row.provider == "local" and row.attempts == 1
        assert row.prompt and row.answer is not None and row.grade == {"score": row.reward}
        assert all(getattr(row, f"{p}_s") is not None for p in
                   ("provision", "ready", "start", "agent", "grade", "teardown", "total"))
    kv = [r for r in rows if r.template_id == "kv_lookup"]
    assert all(r.steps[0]["kind"] == "tunnel" for r in kv)  # reached through tunnel.open
    # every env server is gone: checked by PID, not by trusting the provider
    assert len(provider.pids) == 50
    wait_gone(provider.pids, timeout_s=15)
    assert provider.alive_pids() == [] and not list((tmp_path / "ledger").glob("*.json"))
    assert elapsed < 45


# --- failures: each a row, each sandbox gone ------------------------------------------------


@pytest.fixture
def faulty(tmp_path: Path) -> RecordingLocal:
    return RecordingLocal(env_file=str(ENVS / "faulty.py"), state_dir=str(tmp_path / "ledger"),
                          kill_grace_s=0.5)


def test_the_faulty_env_works_when_nothing_goes_wrong(faulty):
    row = one(rollout_of("ok", {"word": "stressed"}), _answer("desserts"), faulty)
    assert row.status is Status.OK and row.reward == 1.0
    wait_gone(faulty.pids)


def _answer(text: str):
    async def agent(session: Session) -> str:
        return text
    return agent


def test_env_hanging_in_grade_is_a_timeout_in_phase_grade_and_its_process_is_killed(faulty):
    t0 = time.monotonic()
    row = one(rollout_of("hang_grade"), _answer("x"), faulty, deadline_s=4)
    assert row.status is Status.TIMEOUT and row.timeout_phase == "grade", row
    assert row.reward is None and "deadline" in row.error_message
    assert time.monotonic() - t0 < 12
    wait_gone(faulty.pids)


def test_env_blocking_its_own_loop_in_grade_is_still_a_timeout_and_killed(faulty):
    # The env answers nothing (not even tasks.cancel or SIGTERM): only SIGKILL ends it.
    t0 = time.monotonic()
    row = one(rollout_of("block_grade"), _answer("x"), faulty, deadline_s=4,
              cancel_timeout_s=0.5)
    assert row.status is Status.TIMEOUT and row.timeout_phase == "grade", row
    assert time.monotonic() - t0 < 12
    # teardown = SIGTERM grace + SIGKILL, without a 2 s wait for a bye it cannot answer
    assert row.teardown_s < 1.9, row.teardown_s
    wait_gone(faulty.pids)


def test_env_exiting_at_once_is_env_error_with_its_last_output(tmp_path):
    # It exited by itself before serving: the env's own failure, never retried.
    provider = RecordingLocal(env_file=str(ENVS / "exits_at_once.py"),
                              state_dir=str(tmp_path / "ledger"))
    row = one(rollout_of("count"), "rule", provider, deadline_s=30)
    assert row.status is Status.ENV_ERROR and not row.fatal, row
    assert row.error_type == "EnvStartError"
    assert row.error_message.startswith("env server failed to start: fatal: /data/fixtures.db")
    assert "exit code 3" in row.error_message
    assert "loading fixtures from /data/fixtures.db" in row.error_message
    assert "fatal: /data/fixtures.db: no such file" in row.error_message  # stderr too
    wait_gone(provider.pids)


def test_env_that_never_prints_its_port_is_env_error_after_the_startup_budget(tmp_path):
    provider = RecordingLocal(env_file=str(ENVS / "never_ready.py"),
                              state_dir=str(tmp_path / "ledger"), kill_grace_s=0.5)
    t0 = time.monotonic()
    row = one(rollout_of("count"), "rule", provider, deadline_s=60, ready_timeout_s=1.5)
    assert row.status is Status.ENV_ERROR and row.error_type == "EnvStartError", row
    assert "HUD_SERVE_PORT" in row.error_message
    assert "warming cache: waiting for shard 1 (upstream not answering)" in row.error_message
    assert time.monotonic() - t0 < 10  # the startup budget, not the 60 s deadline
    wait_gone(provider.pids)


def test_task_startup_limit_overrides_the_configured_ready_timeout(tmp_path):
    provider = RecordingLocal(env_file=str(ENVS / "never_ready.py"),
                              state_dir=str(tmp_path / "ledger"), kill_grace_s=0.5)
    rollout = rollout_of("count", runtime_config={"limits": {"startup_timeout_s": 0.5}})
    t0 = time.monotonic()
    row = one(rollout, "rule", provider, deadline_s=60, ready_timeout_s=30)
    assert row.status is Status.ENV_ERROR and "0.5s" in row.error_message, row
    assert time.monotonic() - t0 < 8
    wait_gone(provider.pids)


def test_env_dying_mid_grade_is_infra_error_carrying_its_last_words(faulty):
    row = one(rollout_of("die_in_grade"), _answer("x"), faulty, deadline_s=30)
    assert row.status is Status.INFRA_ERROR, row
    assert "grader: out of memory, giving up" in row.error_message
    assert "grader: exiting with status 7" in row.error_message
    wait_gone(faulty.pids)


def test_env_raising_in_start_is_env_error(faulty):
    row = one(rollout_of("fail_start"), "rule", faulty, deadline_s=30)
    assert row.status is Status.ENV_ERROR and row.error_type == "RemoteError", row
    assert "fixture database is missing" in row.error_message
    assert row.agent_s is None  # the agent never ran
    wait_gone(faulty.pids)


def test_env_grading_with_nan_is_env_error(faulty):
    row = one(rollout_of("nan_score"), _answer("x"), faulty, deadline_s=30)
    assert row.status is Status.ENV_ERROR and "non-finite" in row.error_message, row
    assert row.reward is None
    wait_gone(faulty.pids)


def test_agent_raising_is_agent_error(faulty):
    async def broken(session: Session) -> str:
        raise RuntimeError("the model returned an empty completion")

    row = one(rollout_of("ok"), broken, faulty, deadline_s=30)
    assert row.status is Status.AGENT_ERROR and row.error_type == "RuntimeError", row
    assert "empty completion" in row.error_message and row.reward is None
    wait_gone(faulty.pids)


def test_agent_raising_its_own_timeout_error_is_agent_error_not_a_crash(faulty):
    async def impatient(session: Session) -> str:
        raise TimeoutError("LLM call timed out after 30s")

    row = one(rollout_of("ok"), impatient, faulty, deadline_s=30)
    assert row.status is Status.AGENT_ERROR and row.error_type == "TimeoutError", row
    wait_gone(faulty.pids)


def test_agent_over_its_agent_config_timeout_is_timeout_in_phase_agent(faulty):
    async def slow(session: Session) -> str:
        await asyncio.Event().wait()
        return "never"

    rollout = rollout_of("ok", agent_config={"timeout_seconds": 0.5})
    t0 = time.monotonic()
    row = one(rollout, slow, faulty, deadline_s=30)
    assert row.status is Status.TIMEOUT and row.timeout_phase == "agent", row
    assert "timeout_seconds=0.5" in row.error_message
    assert 0.5 <= row.agent_s < 3 and time.monotonic() - t0 < 10
    wait_gone(faulty.pids)


def test_rollout_deadline_during_the_agent_is_timeout_in_phase_agent(faulty):
    async def slow(session: Session) -> str:
        await asyncio.Event().wait()
        return "never"

    row = one(rollout_of("ok"), slow, faulty, deadline_s=4)
    assert row.status is Status.TIMEOUT and row.timeout_phase == "agent", row
    wait_gone(faulty.pids)


def test_missing_env_file_is_a_fatal_infra_error_row(tmp_path):
    provider = LocalProvider(env_file=str(tmp_path / "nope.py"), state_dir=str(tmp_path))
    row = one(rollout_of("ok"), "rule", provider)
    assert row.status is Status.INFRA_ERROR and row.fatal and not row.retryable, row
    assert "env_file" in row.error_message and "nope.py" in row.error_message


def test_image_on_the_local_provider_is_fatal_before_anything_starts(tmp_path):
    provider = RecordingLocal(env_file=str(ENVS / "faulty.py"), state_dir=str(tmp_path))
    row = one(rollout_of("ok", runtime_config={"image": "org/env:1"}), "rule", provider)
    assert row.status is Status.INFRA_ERROR and row.fatal, row
    assert "runtime_config.image" in row.error_message and provider.pids == []


# --- cancellation from outside ----------------------------------------------------------------


def test_cancelled_rollout_destroys_its_sandbox_and_propagates(faulty):
    async def main():
        entered = asyncio.Event()

        async def waiting(session: Session) -> str:
            entered.set()
            await asyncio.Event().wait()
            return "never"

        task = asyncio.create_task(run_rollout(rollout_of("ok"), waiting, faulty,
                                               RolloutConfig(deadline_s=60)))
        await asyncio.wait_for(entered.wait(), 20)
        assert alive(faulty.pids[0])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
        assert faulty.alive_pids() == []  # destroyed before the cancellation propagated

    asyncio.run(main())
    wait_gone(faulty.pids)


def test_cancelled_while_waiting_for_readiness_destroys_the_sandbox(tmp_path):
    provider = RecordingLocal(env_file=str(ENVS / "never_ready.py"),
                              state_dir=str(tmp_path / "ledger"), kill_grace_s=0.5)

    async def main():
        task = asyncio.create_task(run_rollout(rollout_of("count"), resolve_agent("rule"),
                                               provider, RolloutConfig(deadline_s=60)))
        await async_wait_until(lambda: provider.pids, 20, "the env process to start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)

    asyncio.run(main())
    wait_gone(provider.pids)
    assert not list((tmp_path / "ledger").glob("*.json"))


# --- verifier rows (hud's Task.verifier), graded as hud's rollout() grades them ---------------

VERIFIED = ENVS / "verified.py"


def _verified(agent, tmp_path, **row):
    provider = RecordingLocal(env_file=str(VERIFIED), state_dir=str(tmp_path / "ledger"))
    task = Task.model_validate({"env": "verified", "id": "echo", "args": {"word": "hi"},
                                "verifier": {"env": "verified", "id": "half",
                                             "args": {"weight": 0.5}}, **row})
    return one(Rollout(task=task), agent, provider, deadline_s=30)


def test_verifier_grade_is_the_reward_and_the_actor_grade_is_a_step(tmp_path):
    async def right(session):
        return "hi"

    row = _verified(right, tmp_path)
    assert row.status is Status.OK and row.reward == 0.5, row.error_message
    assert [s["grade"]["score"] for s in row.steps if s["kind"] == "actor_grade"] == [1.0]
    assert row.grade["score"] == 0.5


def test_agent_error_on_a_verifier_row_is_still_graded_like_hud(tmp_path):
    async def raises(session):
        raise RuntimeError("model endpoint down")

    row = _verified(raises, tmp_path)
    assert row.status is Status.AGENT_ERROR and "model endpoint down" in row.error_message
    assert row.reward == 0.0  # the actor graded the missing answer 0; the verifier: half of 0


def test_agent_timeout_on_a_verifier_row_is_graded_and_names_the_agent_phase(tmp_path):
    async def hangs(session):
        await asyncio.sleep(60)

    row = _verified(hangs, tmp_path, agent_config={"timeout_seconds": 0.5})
    assert row.status is Status.TIMEOUT and row.timeout_phase == "agent", row
    assert row.reward == 0.0


def test_a_verifier_the_env_lacks_is_env_error_naming_it(tmp_path):
    provider = RecordingLocal(env_file=str(VERIFIED), state_dir=str(tmp_path / "ledger"))
    task = Task.model_validate({"env": "verified", "id": "echo", "args": {"word": "hi"},
                                "verifier": {"id": "nope"}})

    async def right(session):
        return "hi"

    row = one(Rollout(task=task), right, provider, deadline_s=30)
    assert row.status is Status.ENV_ERROR and "verifier 'nope'" in row.error_message, row
    assert row.reward is None
