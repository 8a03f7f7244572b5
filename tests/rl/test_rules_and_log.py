"""The failure rule and the durable group log, without Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hud_ray.rl.group_log import GroupLog
from hud_ray.rl.rules import GroupRule, judge
from hud_ray.rl.staleness import Staleness, StalenessPolicy


def _rows(*statuses: str) -> list[dict]:
    return [{"rollout_key": f"g.t#{i}", "repeat": i, "status": s,
             "reward": 1.0 if s == "ok" else None} for i, s in enumerate(statuses)]


def test_all_ok_is_emitted_whole():
    verdict = judge(GroupRule(), 3, _rows("ok", "ok", "ok"))
    assert verdict.reason is None and verdict.kept == ["g.t#0", "g.t#1", "g.t#2"]


@pytest.mark.parametrize(("rule", "kept", "zeroed", "dropped", "emitted"), [
    ({"on_agent_error": "zero_reward"}, 4, 1, 0, True),
    ({"on_agent_error": "drop_member"}, 3, 0, 1, False),  # min_ok defaults to n
    ({"on_agent_error": "drop_member", "min_ok": 3}, 3, 0, 1, True),
    ({"on_agent_error": "drop_group", "min_ok": 1}, 0, 0, 4, False),
])
def test_agent_error_under_each_rule(rule, kept, zeroed, dropped, emitted):
    verdict = judge(GroupRule(**rule), 4, _rows("ok", "agent_error", "ok", "ok"))
    assert (len(verdict.kept), len(verdict.zeroed), len(verdict.dropped)) == (kept, zeroed,
                                                                             dropped)
    assert (verdict.reason is None) == emitted


def test_timeout_is_a_policy_failure_and_infra_never_earns_a_reward():
    verdict = judge(GroupRule(min_ok=2), 3, _rows("ok", "timeout", "infra_error"))
    assert verdict.zeroed == ["g.t#1"] and verdict.dropped == ["g.t#2"]
    assert verdict.reason is None
    verdict = judge(GroupRule(), 3, _rows("ok", "env_error", "ok"))
    assert "2 of 3 members trainable, min_ok is 3" in verdict.reason


def test_bad_rule_and_staleness_settings_are_named():
    with pytest.raises(ValidationError, match="min_ok"):
        GroupRule(min_ok=0)
    with pytest.raises(ValidationError, match="on_agent_error"):
        GroupRule(on_agent_error="ignore")
    with pytest.raises(ValidationError, match="max_staleness"):
        StalenessPolicy(max_staleness=-1)


def test_capacity_rule_and_bound():
    s = Staleness(StalenessPolicy(max_staleness=1, groups_per_step=4))
    assert s.may_start(version=0, emitted=0, running=7)
    assert not s.may_start(version=0, emitted=0, running=8)  # (1 + 0 + 1) * 4
    assert s.may_start(version=1, emitted=4, running=7)
    assert not s.over(version=3, started_at=2) and s.over(version=3, started_at=1)
    assert not Staleness(StalenessPolicy()).over(version=100, started_at=0)


def test_log_replays_every_state_and_ignores_a_torn_line(tmp_path):
    log = GroupLog(tmp_path)
    for gid in ("a", "b", "c", "d", "e"):
        log.append("submit", gid, request={"n": 1})
    log.append("emit", "a", group={"group_id": "a", "members": []})
    log.append("consumed", "a")
    log.append("emit", "b", group={"group_id": "b", "members": []})
    log.append("drop", "c", reason="stale", kind="stale")
    log.append("cancel", "d")
    log.append("rerun", "e", round=1)
    log.close()
    with log.path.open("a") as fh:
        fh.write('{"op": "consumed", "group_')  # a crash mid-write: never acted on
    again = GroupLog(tmp_path)
    states = {gid: g.state for gid, g in again.groups.items()}
    assert states == {"a": "consumed", "b": "emitted", "c": "dropped", "d": "cancelled",
                      "e": "submitted"}
    assert again.groups["e"].round == 1 and again.torn_lines == 1
    again.append("consumed", "b")  # after the torn line, on a line of its own
    again.close()
    assert GroupLog(tmp_path).groups["b"].state == "consumed"
