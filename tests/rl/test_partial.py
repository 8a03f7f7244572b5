"""PartialTurn (hud_ray.rl.partial): what an aborted stream keeps and how it continues."""

from __future__ import annotations

import json

from hud_ray.rl.partial import PartialTurn, is_plain_completion


def _line(delta: dict, ids: list[int] | None = None, **extra) -> str:
    choice = {"index": 0, "delta": delta, **({"token_ids": ids} if ids else {})}
    return "data: " + json.dumps({"choices": [choice], **extra})


def test_an_aborted_text_stream_continues_from_its_tokens_with_both_versions():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 10}
    assert is_plain_completion(body) and not is_plain_completion({**body, "stream": True})
    partial = PartialTurn()
    partial.feed_line(_line({"role": "assistant"}, prompt_token_ids=[1, 2, 3]), 0)
    partial.feed_line(_line({"content": "ab"}, [5, 6]), 0)
    partial.aborted(0)
    sent = partial.request(body)
    assert sent["stream"] and sent["continue_final_message"] and not sent["add_generation_prompt"]
    assert sent["messages"][-1] == {"role": "assistant", "content": "ab"}
    assert sent["max_tokens"] == 8 and body["max_tokens"] == 10  # the agent's own untouched
    partial.feed_line(_line({"role": "assistant"}, prompt_token_ids=[1, 2, 3, 5, 6]), 1)
    partial.feed_line(_line({"content": "c"}, [7]), 1)
    partial.feed_line(_line({}, finish_reason="stop"), 1)
    partial.feed_line("data: [DONE]", 1)
    reply = partial.reply(1, "v")
    assert reply["choices"][0]["message"]["content"] == "abc"
    assert reply["choices"][0]["token_ids"] == [5, 6, 7]
    assert reply["prompt_token_ids"] == [1, 2, 3]  # the first attempt's prompt
    assert reply["hud_ray_token_versions"] == [0, 0, 1]
    assert reply["hud_ray_partial_versions"] == [0] and reply["v"] == 1
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_a_partial_tool_call_is_dropped_and_the_call_sent_again_whole():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    partial = PartialTurn()
    partial.feed_line(_line({"tool_calls": [{"index": 0, "id": "c1", "function": {
        "name": "add", "arguments": '{"a": 1'}}]}, [9]), 0)
    partial.aborted(0)
    assert partial.request(body)["messages"] == body["messages"]
    assert "continue_final_message" not in partial.request(body)
    assert partial.ids == [] and partial.aborted_versions == []
