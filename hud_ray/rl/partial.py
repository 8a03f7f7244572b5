"""Keep the partial turn across `pause("abort")` (policy `keep_partial: true`).

The agent's non-streaming chat completion is sent to the server streaming, and what
streams back (text, token ids, logprobs, tool-call deltas) is kept as it arrives, each
token tagged with the policy version it was sampled under. When an abort cancels the call
mid-stream, the tokens so far stay; after `resume()` the call continues from them, the
way SkyRL and AReaL re-feed partial rollouts: the partial text goes back as the final
assistant message with vLLM's `continue_final_message: true, add_generation_prompt:
false`, and the new weights sample the rest. The agent gets one ordinary
`chat.completion`: the whole text, every token id and logprob, plus
`hud_ray_token_versions` (per completion token) and `hud_ray_partial_versions` (the
versions of the aborted attempts that contributed tokens).

A partial that holds tool-call deltas is dropped and the call sent again whole: a tool
call's JSON cut mid-way cannot be continued faithfully by a chat template. The server
must stream token ids (vLLM: `return_token_ids` streams them per chunk); without them the
partial text is still continued, and the turn has no per-token versions.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


def is_plain_completion(body: Any) -> bool:
    """A chat-completion request this module can stream on the agent's behalf."""
    return (isinstance(body, dict) and isinstance(body.get("messages"), list)
            and not body.get("stream") and body.get("n", 1) == 1)


class PartialTurn:
    """What one model call has streamed so far, across aborted attempts."""

    def __init__(self) -> None:
        self.text = ""
        self.ids: list[int] = []
        self.logprobs: list[dict[str, Any]] = []
        self.versions: list[int] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.prompt_ids: list[int] | None = None
        self.prompt_tokens: int | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.aborted_versions: list[int] = []

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The streaming request for the next attempt (a continuation if text is kept)."""
        sent = {**body, "stream": True, "stream_options": {"include_usage": True}}
        if self.text:
            sent["messages"] = [*body["messages"], {"role": "assistant", "content": self.text}]
            sent["continue_final_message"], sent["add_generation_prompt"] = True, False
            for key in ("max_tokens", "max_completion_tokens"):
                if isinstance(body.get(key), int):
                    sent[key] = max(1, body[key] - len(self.ids))
        return sent

    def feed_line(self, line: str, version: int) -> None:
        """One SSE line of the stream."""
        if not line.startswith("data:"):
            return
        data = line[5:].strip()
        if not data or data == "[DONE]":
            return
        chunk = json.loads(data)
        self.model = chunk.get("model") or self.model
        if chunk.get("prompt_token_ids") is not None and self.prompt_ids is None:
            self.prompt_ids = list(chunk["prompt_token_ids"])
        usage = chunk.get("usage") or {}
        if usage.get("prompt_tokens") is not None and self.prompt_tokens is None:
            self.prompt_tokens = usage["prompt_tokens"]
        for choice in chunk.get("choices") or []:
            self._feed_choice(choice, version)

    def _feed_choice(self, choice: dict[str, Any], version: int) -> None:
        delta = choice.get("delta") or {}
        self.text += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            slot = self.tool_calls.setdefault(int(call.get("index", 0)), {
                "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            slot["id"] = call.get("id") or slot["id"]
            function = call.get("function") or {}
            slot["function"]["name"] += function.get("name") or ""
            slot["function"]["arguments"] += function.get("arguments") or ""
        ids = choice.get("token_ids") or []
        self.ids += ids
        self.versions += [version] * len(ids)
        self.logprobs += (choice.get("logprobs") or {}).get("content") or []
        self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def aborted(self, version: int) -> None:
        """An attempt was cancelled: keep its tokens unless a tool call was under way."""
        if self.tool_calls:
            self.__init__()  # type: ignore[misc]  # send again whole
            return
        if self.text or self.ids:
            self.aborted_versions.append(version)

    def reply(self, version: int, version_field: str) -> dict[str, Any]:
        """The agent's `chat.completion`, from everything streamed."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        choice: dict[str, Any] = {"index": 0, "message": message,
                                  "finish_reason": self.finish_reason or "stop"}
        if self.logprobs:
            choice["logprobs"] = {"content": self.logprobs}
        if self.ids:
            choice["token_ids"] = self.ids
        completion_tokens = len(self.ids) or len(self.logprobs)
        # The first attempt's prompt, not a continuation's (which holds the partial).
        prompt_tokens = (len(self.prompt_ids) if self.prompt_ids is not None
                         else self.prompt_tokens or 0)
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": 0, "model": self.model or "", "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            version_field: version, "hud_ray_partial_versions": self.aborted_versions,
        }
        if self.prompt_ids is not None:
            reply["prompt_token_ids"] = self.prompt_ids
        if len(self.versions) == len(self.ids) and self.ids:
            reply["hud_ray_token_versions"] = self.versions
        return reply
