"""The LLM endpoint governor through `hud-ray run` on Ray workers: an endpoint that
answers 429 (Retry-After: 1) above 10 requests/s. Ungoverned with no client retries,
rollouts are lost to 429s; governed at 9 requests/s, none is, the model calls waited for
admission instead (`llm_wait_s`)."""

from __future__ import annotations

import json

import pytest

from tests.fakes.hud_envs.policy import policy
from tests.fakes.openai_server import ScriptedModel

from .test_hud_envs import HUD_ENVS, KEY_VAR, hud_ray_run

pytestmark = [pytest.mark.slow]


def _tasks(tmp_path, n: int):
    path = tmp_path / "adds.jsonl"
    path.write_text("".join(json.dumps({"env": "tools", "id": "add", "args": {"a": i, "b": 1}})
                            + "\n" for i in range(n)))
    return path


def _run(tmp_path, model, *extra):
    return hud_ray_run(_tasks(tmp_path, 40), "openai:scripted-1", tmp_path,
                       "--agent-opt", f"base_url={model.base_url}",
                       "--agent-opt", f"api_key_env={KEY_VAR}", "--agent-opt", "max_retries=0",
                       "--provider-opt", f"env_file={HUD_ENVS / 'tools' / 'env.py'}",
                       "--concurrency", "16", *extra)


def test_ungoverned_sweep_loses_rollouts_to_429s(tmp_path):
    # refuse_first: 429s happen however slowly a loaded machine sends
    with ScriptedModel(policy, limit_per_s=10, refuse_first=4) as model:
        rows = _run(tmp_path, model)
    lost = [r for r in rows if r["status"] == "agent_error"]
    assert len(lost) >= 4 and model.rate_limited >= 4
    assert all("RateLimitError" in r["error_message"] for r in lost)


def test_governed_sweep_loses_none_and_records_the_wait(tmp_path):
    with ScriptedModel(policy, limit_per_s=10) as model:
        rows = _run(tmp_path, model, "--llm-limit", "rpm=540", "--llm-limit",
                    "max_concurrent=8")
    assert all(r["status"] == "ok" and r["reward"] == 1.0 for r in rows), \
        [r["error_message"] for r in rows if r["status"] != "ok"][:3]
    # each rollout: a tool call and an answer; 429s (if the window edge catches one) are
    # resent by the governed transport, not lost
    assert model.requests >= 80 and model.rate_limited <= 5, (model.requests,
                                                              model.rate_limited)
    assert all(r["llm_wait_s"] is not None for r in rows)
    assert sum(r["llm_wait_s"] for r in rows) > 0
