"""The per-rollout capture proxy (hud_ray.rl.capture): hud's own `OpenAIChatAgent`, run as
RL group members on Ray workers in a real hud env (local provider), calls its model through
the proxy; every model call lands as an `llm` step with the token ids, logprobs and policy
version the scripted server served, and a new policy set under a pause(hold) between two
groups is the one the second group's calls go to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hud_ray.rl import RolloutSource
from tests.distributed.conftest import wait_for
from tests.fakes.hud_envs.policy import policy
from tests.fakes.openai_server import ScriptedModel

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = REPO / "tests" / "fakes" / "hud_envs" / "tools" / "env.py"
OPENAI_CHAT = "hud:hud.agents.openai_compatible:OpenAIChatAgent"

pytestmark = [pytest.mark.hud, pytest.mark.slow]


def _chain(i: int) -> dict:
    return {"env": "tools", "id": "chain", "slug": f"chain{i}",
            "args": {"a": i, "b": 2, "c": 3}}


def test_hud_openai_chat_agent_members_record_what_the_server_served(ray_local, tmp_path):
    state_dir = tmp_path / "state"
    with ScriptedModel(policy) as model:
        source = RolloutSource(
            OPENAI_CHAT, provider="local", out=tmp_path / "runs", concurrency=4, warm=0,
            provider_options={"env_file": str(ENV_FILE), "state_dir": str(state_dir)},
            agent_config={"model": "ignored-by-the-policy", "base_url": "http://127.0.0.1:9/v1",
                          "api_key": "sk-scripted"},
            policy={"base_url": model.base_url, "model": "scripted-1"})
        source.submit(_chain(1), n=2, sampling={"temperature": 0.5, "top_k": 3})
        first = source.next_group(timeout_s=240)
        source.ack(first.group_id)
        source.pause("hold")  # a weight update: the next group's calls wait for resume
        model.weight_version = 1
        source.set_policy(1)
        source.submit(_chain(2), n=2)
        source.resume()
        second = source.next_group(timeout_s=240)
        source.ack(second.group_id)
        source.close()
        served = list(model.served)
        usage = [u for calls in model.usage.values() for u in calls]
    members = first.members + second.members
    assert all(m.status == "ok" and m.reward == 1.0 for m in members), \
        [(m.status, m.row.get("error_message")) for m in members]
    # Three model calls per member (two add calls, then the answer), each through the
    # proxy to the policy's endpoint and model, under the version the weights had.
    assert len(served) == 12 and all(int(sent) == weights for sent, weights in served)
    llm = [s for m in members for s in json.loads(m.row["steps"]) if s["kind"] == "llm"]
    assert len(llm) == 12 and all(s["model"] == "scripted-1" for s in llm)
    # Token-faithful: exactly the ids and logprobs the server sent, call for call.
    assert sorted(s["completion_token_ids"] for s in llm) == sorted(u[3] for u in usage)
    assert sorted(s["prompt_token_ids"] for s in llm) == sorted(u[2] for u in usage)
    assert all(s["logprobs"] == [-0.125 * (i + 1) for i in range(7)] for s in llm)
    # Versions: group 1 ran under 0, group 2 (started while held) under 1, every turn too.
    for group, version in ((first, 0), (second, 1)):
        for member in group.members:
            turns = [s["policy_version"] for s in json.loads(member.row["steps"])
                     if s["kind"] == "llm"]
            assert turns == [version] * 3
            assert member.version_start == version == member.version_end
            assert sum(sum(seq.loss_mask) for seq in member.tokens()) == 21  # 3 calls x 7 sampled
    assert {"temperature": 0.5, "top_k": 3} in model.sampling_seen, "the group's sampling"
    wait_for(lambda: not list(state_dir.glob("*.json")), 60, "an empty sandbox ledger")


def test_an_agents_own_client_through_the_proxy_keeps_its_partial_turn_across_abort(
        ray_local, tmp_path):
    import uuid

    from providers.sim import sim_stats

    account = f"rl-{uuid.uuid4().hex[:6]}"
    text = "abcdefghij"  # streamed one token per character by the scripted server
    with ScriptedModel(lambda m, t: {"content": text}) as model:
        model.token_s = 0.15
        source = RolloutSource(
            "tests/fakes/rl_agents.py:capture_proxy_agent", provider="sim",
            out=tmp_path / "runs", concurrency=4, warm=0,
            provider_options={"account": account, "flush_s": "0"},
            policy={"base_url": model.base_url, "model": "scripted-1", "keep_partial": True})
        source.submit({"env": "sim", "id": "t", "slug": "p", "args": {"answer": text},
                       "prompt": "spell it"}, n=2)
        wait_for(lambda: model.streamed_tokens >= 4, 60, "tokens streaming to the members")
        source.pause("abort")
        model.weight_version = 1
        source.set_policy(1)
        source.resume()
        group = source.next_group(timeout_s=60)
        source.ack(group.group_id)
        source.close()
    assert [(m.status, m.reward) for m in group.members] == [("ok", 1.0)] * 2, \
        [m.row.get("error_message") for m in group.members]
    for member in group.members:
        (step,) = [s for s in json.loads(member.row["steps"]) if s["kind"] == "llm"]
        assert step["model"] == "scripted-1" and step["policy_version"] == 1
        assert "".join(chr(i // 100) for i in step["completion_token_ids"]) == text
        assert step["token_versions"] == [i % 100 for i in step["completion_token_ids"]]
        assert member.tokens()[0].versions == step["token_versions"]
    assert model.continuations >= 1
    wait_for(lambda: sim_stats(account)["live"] == 0, 60, "0 sandboxes left in the sim")
