"""Policy versions and pause/resume under a rollout source: the built-in `openai:` agent
against a scripted model server that reports the weights' version per request."""

from __future__ import annotations

import json
import random
import uuid

import pytest

from hud_ray.rl import RolloutSource
from providers.sim import sim_stats
from tests.distributed.conftest import wait_for
from tests.fakes.openai_server import ScriptedModel, answer


def _long_tail(median_s: float):
    return lambda: random.expovariate(1.0 / median_s) * (10.0 if random.random() < 0.1 else 1.0)


def _source(tmp_path, model: ScriptedModel, account: str, **kw) -> RolloutSource:
    return RolloutSource(
        "openai:scripted-1", provider="sim", out=tmp_path / "runs", concurrency=16,
        provider_options={"account": account, "flush_s": "0"}, warm=0,
        agent_config={"base_url": model.base_url, "max_retries": 0,
                      "return_token_ids": True, "logprobs": True},
        policy={"base_url": model.base_url, "model": "scripted-1"}, **kw)


def _task(i: int) -> dict:
    return {"env": "sim", "id": "t", "slug": f"t{i}", "args": {"answer": "a"}, "prompt": "say a"}


def _train(source: RolloutSource, model: ScriptedModel, mode: str, groups: int) -> list:
    """Take groups; every 4 taken: pause, swap the weights, set the policy, resume."""
    for i in range(8):
        source.submit(_task(i), n=4, sampling={"temperature": 0.7, "top_k": 5})
    submitted, taken = 8, []
    for group in source:
        taken.append(group)
        source.ack(group.group_id)
        if len(taken) % 4 == 0:
            source.pause(mode)
            model.weight_version += 1
            source.set_policy(source.version + 1)
            source.resume()
        if submitted < groups:
            source.submit(_task(submitted), n=4)
            submitted += 1
        elif len(taken) == groups:
            source.close()
    return taken


def _turn_versions(group) -> list[tuple[int, int, int]]:
    """(start, turn, end) policy versions of every model call of every member."""
    out = []
    for member in group.members:
        for step in json.loads(member.row["steps"]):
            if step.get("kind") == "llm":
                out.append((member.version_start, step["policy_version"], member.version_end))
    return out


@pytest.mark.slow
def test_drain_swaps_weights_between_calls_and_every_turn_has_its_version(ray_local, tmp_path):
    account = f"rl-{uuid.uuid4().hex[:6]}"
    # 429s for the first 8 requests and above 40 requests/s: the endpoint governor's
    # transport (under the policy's) waits out Retry-After and sends again, so no member
    # fails on them.
    with ScriptedModel(lambda m, t: answer("a"), latency_s=_long_tail(0.05),
                       limit_per_s=40, refuse_first=8) as model:
        source = _source(tmp_path, model, account, llm_limits={"max_retries_429": 30})
        taken = _train(source, model, "drain", groups=24)
        served = list(model.served)
    assert model.rate_limited >= 8, "the endpoint did rate-limit"
    assert len(taken) == 24 and all(m.reward == 1.0 for g in taken for m in g.members)
    assert served and all(int(sent) == weights for sent, weights in served), \
        "drain: no model call answered by weights other than the version it was sent under"
    turns = [t for g in taken for t in _turn_versions(g)]
    assert len(turns) == 24 * 4 and all(s <= v <= e for s, v, e in turns)
    assert max(v for _, v, _ in turns) >= 4, "versions moved while groups ran"
    assert {"temperature": 0.7, "top_k": 5} in model.sampling_seen, "the group's sampling"
    for member in taken[-1].members:  # one turn: one sequence, all sampled, its version
        (seq,) = member.tokens()
        assert seq.loss_mask == [1] * 7 and seq.logprobs_complete and len(seq.prompt_ids) > 0
        assert seq.logprobs == [-0.125 * (i + 1) for i in range(7)]
        assert set(seq.versions) == {json.loads(member.row["steps"])[0]["policy_version"]}
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")


@pytest.mark.slow
def test_abort_cancels_in_flight_calls_and_resends_them_losing_no_group(ray_local, tmp_path):
    account = f"rl-{uuid.uuid4().hex[:6]}"
    with ScriptedModel(lambda m, t: answer("a"), latency_s=_long_tail(0.3)) as model:
        source = _source(tmp_path, model, account)
        taken = _train(source, model, "abort", groups=16)
        state = source.policy_state()
    assert state["aborted_calls"] > 0 and state["in_flight"] == 0
    assert len({g.group_id for g in taken}) == 16
    assert all(m.status == "ok" and m.reward == 1.0 for g in taken for m in g.members)
    # An aborted call is sent again under the version set before resume.
    assert all(s <= v <= e for g in taken for s, v, e in _turn_versions(g))
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")


def test_an_unknown_policy_endpoint_is_one_clear_error(ray_local, tmp_path):
    account = f"rl-{uuid.uuid4().hex[:6]}"
    with ScriptedModel(lambda m, t: answer("a")) as model:
        source = _source(tmp_path, model, account)
        with pytest.raises(ValueError, match=r"policy endpoint http://127.0.0.1:9/v1: GET"):
            source.set_policy(1, base_url="http://127.0.0.1:9/v1")
        with pytest.raises(ValueError, match="does not serve model 'other'"):
            source.set_policy(1, base_url=model.base_url, model="other")
        with pytest.raises(ValueError, match="pause mode must be"):
            source.pause("sleep")
        assert source.version == 0  # nothing changed
        source.close()


@pytest.mark.slow
def test_a_hold_longer_than_the_deadline_stops_the_clock_and_the_group_finishes(
        ray_local, tmp_path, caplog):
    import time

    account = f"rl-{uuid.uuid4().hex[:6]}"
    with ScriptedModel(lambda m, t: answer("a")) as model:
        source = _source(tmp_path, model, account, timeout_s=4.0, max_pause_s=3.0)
        source.pause("hold")
        source.submit(_task(0), n=2)
        wait_for(lambda: source.policy_state()["waiting"] == 2, 60,
                 "both members' model calls blocked by the hold")
        time.sleep(6.0)  # the weight update itself: longer than the 4 s deadline
        with caplog.at_level("WARNING", logger="hud_ray.rl"):
            source.resume()
        # Longer than the sandboxes' lifetimes were budgeted for: said, and counted.
        assert "longer than max_pause_s=3.0" in caplog.text
        assert source.stats()["long_pauses"] == 1
        group = source.next_group(timeout_s=60)
        source.ack(group.group_id)
        source.close()
    assert [(m.status, m.reward) for m in group.members] == [("ok", 1.0)] * 2, \
        [m.row.get("error_message") for m in group.members]
    # Their agent phase spanned the hold (and outlived the 4 s deadline).
    assert all(m.row["agent_s"] >= 6.0 for m in group.members)
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")


@pytest.mark.slow
def test_abort_keeps_the_partial_turn_and_the_new_weights_finish_it(ray_local, tmp_path):
    account = f"rl-{uuid.uuid4().hex[:6]}"
    text = "abcdefghijkl"  # the scripted server streams one token per character
    with ScriptedModel(lambda m, t: answer(text)) as model:
        model.token_s = 0.15
        source = RolloutSource(
            "openai:scripted-1", provider="sim", out=tmp_path / "runs", concurrency=8,
            provider_options={"account": account, "flush_s": "0"}, warm=0,
            agent_config={"base_url": model.base_url, "max_retries": 0,
                          "return_token_ids": True, "logprobs": True},
            policy={"base_url": model.base_url, "model": "scripted-1", "keep_partial": True})
        source.submit({"env": "sim", "id": "t", "slug": "p", "args": {"answer": text},
                       "prompt": "spell it"}, n=4)
        wait_for(lambda: model.streamed_tokens >= 8, 60, "tokens streaming to the members")
        source.pause("abort")  # mid-stream: the tokens so far are kept
        model.weight_version = 1
        source.set_policy(1)
        source.resume()
        group = source.next_group(timeout_s=60)
        source.ack(group.group_id)
        source.close()
    assert [(m.status, m.reward) for m in group.members] == [("ok", 1.0)] * 4, \
        [m.row.get("error_message") for m in group.members]
    assert model.continuations >= 1, "an aborted call continued, not sent again whole"
    split = 0
    for member in group.members:
        (step,) = [s for s in json.loads(member.row["steps"]) if s["kind"] == "llm"]
        ids, versions = step["completion_token_ids"], step["token_versions"]
        # Every token once, in order, each with the version of the weights that sampled it.
        assert "".join(chr(i // 100) for i in ids) == text
        assert versions == [i % 100 for i in ids] and versions == sorted(versions)
        assert step["logprobs"] == [-0.01 * (v + 1) for v in versions]
        assert step["policy_version"] == 1
        (seq,) = member.tokens()
        assert seq.versions == versions and seq.loss_mask == [1] * len(text)
        if step.get("partial_versions"):
            assert step["partial_versions"] == [0] and versions[0] == 0 and versions[-1] == 1
            split += 1
    assert split >= 1, "at least one member's turn was sampled by both versions"
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")
