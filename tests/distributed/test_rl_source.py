"""The RL rollout source through the user's path: groups on Ray workers, sim sandboxes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from hud_ray.results import read_results
from hud_ray.rl import (
    RolloutSource,
    SourceClosedError,
    SourceFullError,
    SourceStarvedError,
)
from hud_ray.rl.group_log import GroupLog
from providers.sim import sim_stats
from tests.distributed.conftest import REPO, kill_tree, wait_for

AGENTS = "tests/fakes/rl_agents.py"


def _source(tmp_path, agent: str, account: str, **kw) -> RolloutSource:
    sim = {"account": account, "flush_s": "0", **kw.pop("sim", {})}
    return RolloutSource(f"{AGENTS}:{agent}", provider="sim", out=tmp_path / "runs",
                         concurrency=kw.pop("concurrency", 8), provider_options=sim,
                         retry_backoff_s=0.05, **kw)


def _task(i: int, **args) -> dict:
    return {"env": "sim", "id": "t", "slug": f"t{i}", "args": {"answer": "a", **args}}


@pytest.mark.slow
def test_failure_rules_and_infra_retries_inside_the_group(ray_local, tmp_path):
    """Each rule gives its documented group; sandboxes that fail to start are retried in
    new sandboxes without the group noticing; every member lands in Parquet."""
    account = f"rl-{uuid.uuid4().hex[:6]}"
    # A fixed run id and no warm sandboxes: the sim draws each create's fate from the
    # rollout attempt's name, so which creates fail is the same on every run of this test
    # (with warm-ahead, a failed warm create is retried by the pool, not as an attempt).
    source = _source(tmp_path, "failing_member_agent", account, max_attempts=8,
                     run_id="rl-rules", warm=0,
                     sim={"create_fail_rate": "0.25", "seed": "3"})
    ids = {
        "ok": source.submit(_task(0), n=4),
        "zero": source.submit(_task(1, fail_index=1), n=4, rule={"on_agent_error": "zero_reward"}),
        "member": source.submit(_task(2, fail_index=1), n=4,
                                rule={"on_agent_error": "drop_member", "min_ok": 3}),
        "group": source.submit(_task(3, fail_index=1), n=4,
                               rule={"on_agent_error": "drop_group", "min_ok": 1}),
        "short": source.submit(_task(4, fail_index=1), n=4,
                               rule={"on_agent_error": "drop_member"}),
    }
    source.close()
    groups = {g.group_id: g for g in source}
    by_name = {name: groups.get(gid) for name, gid in ids.items()}
    assert sorted(m.reward for m in by_name["ok"].members) == [1.0] * 4
    zero = by_name["zero"]
    assert [m.reward for m in sorted(zero.members, key=lambda m: m.index)] == [1.0, 0.0, 1.0, 1.0]
    assert [m.index for m in zero.members if m.zeroed] == [1]
    assert len(by_name["member"].members) == 3 and len(by_name["member"].dropped) == 1
    assert by_name["group"] is None and by_name["short"] is None
    log = GroupLog(source.run_dir)
    assert "on_agent_error=drop_group" in log.groups[ids["group"]].reason
    assert "3 of 4 members trainable, min_ok is 4" in log.groups[ids["short"]].reason
    rows = read_results(source.run_dir).to_pylist()
    assert len(rows) == 20 and len({r["rollout_key"] for r in rows}) == 20
    assert any(r["attempts"] > 1 and r["status"] == "ok" for r in rows), "infra retries"
    assert sim_stats(account)["create_failures"] > 0
    facts = [json.loads(r["columns"])["rl"] for r in rows]
    assert all(f["policy_version_start"] == 0 == f["policy_version_end"] for f in facts)
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")


@pytest.mark.slow
def test_a_thousand_groups_never_exceed_the_staleness_bound(ray_local, tmp_path):
    """1,000 groups on long-tailed members, the version bumped every 8 groups taken:
    no group handed out has a member that started more than max_staleness behind."""
    account = f"rl-{uuid.uuid4().hex[:6]}"
    source = _source(tmp_path, "coin_agent", account, concurrency=32, governor=False,
                     staleness={"max_staleness": 1, "groups_per_step": 8,
                                "over_bound": "drop"})
    total, per_step, lags, seen = 1000, 8, [], set()
    submitted = 0
    while submitted < 64:
        source.submit(_task(submitted, think_s=0.01), n=2)
        submitted += 1
    taken = 0
    for group in source:
        assert group.group_id not in seen
        seen.add(group.group_id)
        lags.append(source.version - group.min_version)
        source.ack(group.group_id)
        taken += 1
        if taken % per_step == 0:
            source.set_policy(source.version + 1)
        if submitted < total:
            source.submit(_task(submitted, think_s=0.01), n=2)
            submitted += 1
            if submitted == total:  # the rest still finish; iteration ends after them
                source.close(timeout_s=0)
    stats = source.stats()
    assert max(lags) <= 1 and stats["max_lag_emitted"] <= 1
    # Every group is accounted for: taken, or dropped as stale (counted, logged, reported).
    assert taken + stats["stale_dropped"] == total and stats["dropped"] == stats["stale_dropped"]
    assert taken >= 900, stats
    log = GroupLog(source.run_dir)
    assert log.count("consumed") == taken and log.count("emitted") == 0


@pytest.mark.slow
def test_stale_groups_rerun_with_fresh_members_so_none_is_lost(ray_local, tmp_path):
    """over_bound=rerun at max_staleness 0: a group that finishes after a version bump
    runs again with new members (new keys, new sandboxes); every group comes out once,
    fresh."""
    account = f"rl-{uuid.uuid4().hex[:6]}"
    source = _source(tmp_path, "coin_agent", account, concurrency=16, governor=False,
                     staleness={"max_staleness": 0, "over_bound": "rerun"})
    ids = {source.submit(_task(i, think_s=0.05), n=2) for i in range(40)}
    source.close(timeout_s=0)
    taken = []
    for group in source:
        assert group.min_version == source.version, "staleness 0: all of this version"
        taken.append(group.group_id)
        source.ack(group.group_id)
        if len(taken) % 4 == 0:
            source.set_policy(source.version + 1)
    stats = source.stats()
    assert sorted(taken) == sorted(ids) and stats["stale_rerun"] > 0, stats
    rows = read_results(source.run_dir).to_pylist()
    assert len({r["rollout_key"] for r in rows}) == len(rows) > 80, "reruns are new rollouts"


@pytest.mark.slow
def test_cancel_tears_down_a_running_group_and_a_worker_kill_keeps_one(ray_local, tmp_path):
    account = f"rl-{uuid.uuid4().hex[:6]}"
    source = _source(tmp_path, "failing_member_agent", account, concurrency=8, workers=2,
                     warm=0)  # no warm sandboxes: the live count is the members
    doomed = source.submit(_task(0, think_s=60), n=4)
    kept = source.submit(_task(1, think_s=2), n=4)
    wait_for(lambda: sim_stats(account)["live"] >= 8, 60, "8 sandboxes live")
    source.cancel(doomed)
    wait_for(lambda: sim_stats(account)["live"] <= 4, 30, "the cancelled group's sandboxes gone")
    # A worker dies mid-group: its members run again elsewhere, the group comes out once.
    pid = ray_local.get(source.scheduler.workers[0].actor.ping.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    group = source.next_group(timeout_s=90)
    assert group is not None and group.group_id == kept and len(group.members) == 4
    assert all(m.reward == 1.0 for m in group.members)
    source.close()
    assert source.next_group(timeout_s=1) is None
    rows = read_results(source.run_dir).to_pylist()
    assert sorted(r["rollout_key"] for r in rows) == sorted(f"{kept}.t1#{i}" for i in range(4))
    assert any(r["attempts"] > 1 for r in rows), "the killed worker's members ran again"
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")
    assert GroupLog(source.run_dir).groups[doomed].state == "cancelled"


@pytest.mark.slow
def test_close_with_cancel_ends_while_members_wait_for_warm_sandboxes(ray_local, tmp_path):
    """A member waiting for a sandbox still warming is cancelled too: it ends as a row on
    its worker, so the run ends (it used to be counted in flight forever)."""
    account = f"rl-{uuid.uuid4().hex[:6]}"
    # One warm sandbox ahead (0.125 x 8 slots); every sandbox takes 5 s to be ready.
    source = _source(tmp_path, "coin_agent", account, concurrency=8, workers=1, warm=0.125,
                     sim={"cold_start_s": "5"})
    source.submit(_task(0, think_s=60), n=4)
    # t=0: member 0 starts cold (the probe) and one warm-up; t=5: member 1 takes that
    # warm sandbox and sets off the next, member 2 waits for it, member 3 goes cold
    # with one more warm-up: 5 creates, and member 2 waits until t=10.
    wait_for(lambda: sim_stats(account)["creates"] >= 5, 60, "5 sandboxes created")
    source.close(cancel=True, timeout_s=60)
    assert not source._thread.is_alive(), "close(cancel=True) did not end the run"
    assert source.next_group(timeout_s=0) is None
    assert read_results(source.run_dir).num_rows == 0  # cancelled rows are not written
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")


def test_waiting_with_nothing_outstanding_is_an_error_not_a_hang(ray_local, tmp_path):
    """A trainer that submits only after taking, whose last group was dropped (here by
    its failure rule): next_group() says so instead of waiting forever."""
    account = f"rl-{uuid.uuid4().hex[:6]}"
    source = _source(tmp_path, "failing_member_agent", account, warm=0)
    kept = source.submit(_task(0), n=2)
    source.submit(_task(1, fail_index=0), n=2, rule={"on_agent_error": "drop_group"})
    assert source.next_group().group_id == kept
    wait_for(lambda: source.stats()["dropped"] == 1, 60, "the failing group dropped")
    with pytest.raises(SourceStarvedError,
                       match=r"no group is queued, running or ready \(2 submitted, 1 taken, "
                             r"1 dropped"):
        source.next_group()
    assert source.next_group(timeout_s=0.1) is None  # with a timeout: just None
    source.submit(_task(2), n=1)  # the source is still usable
    assert source.next_group(timeout_s=60) is not None
    source.close()


def test_bad_inputs_each_get_one_clear_error(ray_local, tmp_path):
    account = f"rl-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ValueError, match="max_staleness"):
        _source(tmp_path, "coin_agent", account, staleness={"max_staleness": -1})
    source = _source(tmp_path, "coin_agent", account, max_outstanding_groups=3,
                     max_ready_groups=1, concurrency=1)
    with pytest.raises(ValueError, match="group size n must be a whole number >= 1, got 0"):
        source.submit(_task(0), n=0)
    with pytest.raises(ValueError, match="policy version must be a whole number"):
        source.set_policy(-1)
    ids = {source.submit(_task(i), n=1) for i in range(3)}
    with pytest.raises(SourceFullError, match="max_outstanding_groups=3"):
        source.submit(_task(3), n=1)
    # A trainer that does not iterate: once a finished group waits, nothing new starts
    # (one slot: the group after the first may start before the first is on disk).
    wait_for(lambda: source.stats()["ready"] >= 1 and source.stats()["running"] == 0, 60,
             "a finished group waiting, none running")
    assert source.stats()["queued"] >= 1
    source.close()
    with pytest.raises(SourceClosedError, match="after close"):
        source.submit(_task(4), n=1)
    assert {g.group_id for g in source} == ids, "nothing lost"


@pytest.mark.slow
def test_a_killed_and_restarted_driver_loses_no_group_and_acks_none_twice(ray_local, tmp_path):
    """SIGKILL the trainer's driver mid-run, start it again (resume): every group is
    acked exactly once; one handed out again was never acked before the kill; no member
    row is duplicated in Parquet; no sandbox is left."""
    account = f"rl-{uuid.uuid4().hex[:6]}"
    out, total = tmp_path / "runs", 30
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "RAY_AUTH_MODE": "disabled"}
    trainer_log = out / "trainer.log"

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.distributed.rl_driver", str(out), account,
             str(total)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)

    def acked() -> list[str]:
        if not trainer_log.exists():
            return []
        return [ln.split()[1] for ln in trainer_log.read_text().splitlines()
                if ln.startswith("acked")]

    first = start()
    try:
        wait_for(lambda: len(acked()) >= 8, 120, "8 groups acked by the first driver")
    finally:
        kill_tree(first)
    before = set(acked())
    second = start()
    try:
        _, stderr = second.communicate(timeout=180)
    finally:
        kill_tree(second)
    assert second.returncode == 0, stderr[-3000:]
    lines = trainer_log.read_text().splitlines()
    acks = acked()
    assert len(acks) == len(set(acks)), "no group acked twice"
    log = GroupLog(out / "rl-restart")
    assert len(log.groups) == total
    assert set(acks) | {g for g, lg in log.groups.items() if lg.state == "dropped"} == set(
        log.groups), "no group lost"
    again = [ln.split()[1] for ln in lines if ln.startswith("took") and ln.endswith("True")]
    assert not set(again) & before, "only groups never acked are handed out again"
    rows = read_results(out / "rl-restart").to_pylist()
    keys = [r["rollout_key"] for r in rows]
    assert len(keys) == len(set(keys)) == total * 3, "every member once in Parquet"
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")
