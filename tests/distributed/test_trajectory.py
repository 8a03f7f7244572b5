"""Trajectories a user can query: typed columns on every rollout row and one row per step
in `runs/<id>/steps/`, for the built-in `openai:MODEL` agent and for hud's own agent,
against a scripted OpenAI-compatible server on 127.0.0.1 whose every response (usage,
token ids, logprobs) the test knows. Through `hud-ray run` on Ray workers."""

from __future__ import annotations

import json

import pytest

from hud_ray.results import read_results, read_steps
from tests.fakes.hud_envs.policy import policy
from tests.fakes.openai_server import ScriptedModel

from .test_hud_envs import HUD_ENVS, KEY_VAR, OPENAI_CHAT, hud_ray_run, model_opts

pytestmark = [pytest.mark.slow]

PRICES = "scripted-1:\n  input: 2.0\n  output: 10.0\n"


def _tasks(tmp_path):
    rows = [{"env": "tools", "id": "add", "args": {"a": 2, "b": 3}},
            {"env": "tools", "id": "add", "args": {"a": 13, "b": 4}},   # broken JSON once
            {"env": "tools", "id": "chain", "args": {"a": 1, "b": 2, "c": 3}},
            {"env": "tools", "id": "lookup", "args": {"key": "k3"}}]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _check_against_model(rows, steps, model, *, token_ids: bool):
    by_prompt = {row["prompt"]: row for row in rows}
    assert set(by_prompt) == set(model.usage)
    for prompt, sent in model.usage.items():
        row = by_prompt[prompt]
        assert row["n_turns"] == len(sent), (prompt, row["n_turns"])
        assert row["prompt_tokens"] == sum(s[0] for s in sent)
        assert row["completion_tokens"] == 7 * len(sent)
        assert row["model"] == "scripted-1" and row["stop_reason"] == "stop"
        calls = model.tool_calls()[prompt]
        assert row["n_tool_calls"] == len(calls)
        assert row["llm_s"] is not None and row["llm_s"] > 0
        mine = [s for s in steps if s["rollout_key"] == row["rollout_key"]]
        assert [s["index"] for s in mine] == sorted(s["index"] for s in mine)
        llm = [s for s in mine if s["kind"] == "llm"]
        assert [s["prompt_tokens"] for s in llm] == [s[0] for s in sent]
        if token_ids:
            assert [s["prompt_token_ids"] for s in llm] == [s[2] for s in sent]
            assert [s["completion_token_ids"] for s in llm] == [s[3] for s in sent]
            assert [pytest.approx(s["logprobs"]) for s in llm] == [s[4] for s in sent]
        tools = [s for s in mine if s["kind"] == "tool"]
        assert [(t["tool_name"], _maybe_json(t["tool_args"])) for t in tools] == \
            [(name, _maybe_json(args)) for name, args in calls]


def _maybe_json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text  # the broken arguments, kept as the model sent them


def test_builtin_openai_agent_fills_the_trajectory_columns_and_steps(tmp_path):
    (tmp_path / "prices.yaml").write_text(PRICES)
    with ScriptedModel(policy) as model:
        rows = hud_ray_run(_tasks(tmp_path), "openai:scripted-1", tmp_path, *model_opts(model)[2:],
                           "--agent-opt", "return_token_ids=true", "--agent-opt",
                           "logprobs=true", "--provider-opt",
                           f"env_file={HUD_ENVS / 'tools' / 'env.py'}",
                           "--price-table", str(tmp_path / "prices.yaml"))
        run_dir = tmp_path / rows[0]["run_id"]
        steps = read_steps(run_dir).to_pylist()
        assert all(r["status"] == "ok" and r["reward"] == 1.0 for r in rows), \
            [(r["slug"], r["error_message"]) for r in rows]
        _check_against_model(rows, steps, model, token_ids=True)
    # steps/ joins back to every rollout, and only to rollouts that exist
    keys = {r["rollout_key"] for r in read_results(run_dir).to_pylist()}
    assert {s["rollout_key"] for s in steps} == keys
    broken = next(r for r in rows if "13 + 4" in r["prompt"])
    assert broken["n_tool_errors"] == 1 and broken["n_tool_calls"] == 2
    bad_step = next(s for s in steps if s["rollout_key"] == broken["rollout_key"]
                    and s["is_error"])
    assert "not valid JSON" in bad_step["tool_result"]
    for row in rows:  # cost from the user's price table: $2 / $10 per 1M tokens
        expected = (row["prompt_tokens"] * 2.0 + row["completion_tokens"] * 10.0) / 1e6
        assert row["cost_usd"] == pytest.approx(expected)


def test_hud_agent_fills_the_same_columns_and_raw_responses_stay_out(tmp_path):
    with ScriptedModel(policy) as model:
        rows = hud_ray_run(_tasks(tmp_path), f"hud:{OPENAI_CHAT}", tmp_path,
                           *model_opts(model), "--provider-opt",
                           f"env_file={HUD_ENVS / 'tools' / 'env.py'}")
        steps = read_steps(tmp_path / rows[0]["run_id"]).to_pylist()
        _check_against_model([r for r in rows if "13 + 4" not in r["prompt"]], steps,
                             _without(model, "13 + 4"), token_ids=False)
    # unknown model in the price table: NULL cost, no error
    assert all(r["cost_usd"] is None and r["status"] == "ok" for r in rows)
    assert all('"raw"' not in r["steps"] for r in rows)  # raw responses only with --keep-raw
    assert all(s["raw"] is None for s in steps)


def _without(model: ScriptedModel, fragment: str) -> ScriptedModel:
    """The model's log minus the conversations containing `fragment`."""
    for table in (model.usage, model.conversations):
        for key in [k for k in table if fragment in k]:
            del table[key]
    return model


def test_endpoint_down_is_an_agent_error_naming_it_without_retries(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    rows = hud_ray_run(_tasks(tmp_path), "openai:scripted-1", tmp_path,
                       "--agent-opt", f"base_url=http://127.0.0.1:{dead}/v1",
                       "--agent-opt", f"api_key_env={KEY_VAR}", "--agent-opt", "max_retries=0",
                       "--provider-opt", f"env_file={HUD_ENVS / 'tools' / 'env.py'}")
    assert all(r["status"] == "agent_error" and r["attempts"] == 1 for r in rows), rows
    assert all(f"model endpoint http://127.0.0.1:{dead}/v1 (scripted-1): APIConnectionError"
               in r["error_message"] for r in rows), rows[0]["error_message"]


def test_report_shows_tokens_cost_and_tool_errors_per_template(tmp_path):
    from hud_ray.report import build_report, report_run

    (tmp_path / "prices.yaml").write_text(PRICES)
    with ScriptedModel(policy) as model:
        rows = hud_ray_run(_tasks(tmp_path), "openai:scripted-1", tmp_path,
                           *model_opts(model)[2:], "--provider-opt",
                           f"env_file={HUD_ENVS / 'tools' / 'env.py'}",
                           "--price-table", str(tmp_path / "prices.yaml"))
    run_dir = tmp_path / rows[0]["run_id"]
    report = build_report(read_results(run_dir))
    usage = {t["template"]: t["usage"] for t in report["templates"]}
    adds = [r for r in rows if r["template_id"] == "add"]
    assert usage["add"]["tool_errors"] == 1  # the broken-JSON call
    assert usage["add"]["model_calls"] == sum(r["n_turns"] for r in adds)
    assert usage["add"]["tokens"] == sum(r["prompt_tokens"] + r["completion_tokens"]
                                         for r in adds)
    assert usage["add"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in adds))
    text = report_run(run_dir)
    assert "model and tool usage:" in text and "tool errors" in text
