"""Token-faithful output: what a trainer feeds its loss, from the turns a rollout recorded.

Each model call of a rollout (an `llm` step, recorded by the `openai:` agent when the
endpoint returns token ids and logprobs — vLLM: `return_token_ids`, `logprobs`) is a turn:
prompt ids, completion ids, completion logprobs, and the policy version that produced it.

`merge` joins a rollout's turns into as few sequences as the prefix property allows: when
turn k+1's prompt starts with everything before it (turn k's prompt + completion), the
tokens in between (tool results, the chat template's glue) are appended with loss mask 0
and the new completion with loss mask 1 — one sequence, trained on once. Where the prefix
breaks (the agent rewrote its history, a template re-tokenised), a new sequence starts:
never a silently wrong alignment.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field


class Turn(BaseModel):
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float] | None = None
    version: int | None = None


class TokenSequence(BaseModel):
    """One trainable sequence: `prompt_ids` then `response_ids`, where `loss_mask` (per
    response token) is 1 on tokens the policy sampled and 0 on those it was given."""

    prompt_ids: list[int]
    response_ids: list[int] = Field(default_factory=list)
    loss_mask: list[int] = Field(default_factory=list)
    logprobs: list[float] = Field(default_factory=list, description="0.0 where masked")
    versions: list[int] = Field(default_factory=list, description="per response token: "
                                "the policy version that sampled it (-1 where masked)")
    logprobs_complete: bool = Field(True, description="False if a turn came without logprobs")
    turns: int = 0


def turns_of(row: dict[str, Any]) -> list[Turn]:
    """The turns of a rollout row (its `steps` JSON); turns without token ids are skipped."""
    steps = row.get("steps")
    steps = json.loads(steps) if isinstance(steps, str) else (steps or [])
    out = []
    for step in steps:
        if step.get("kind") != "llm" or step.get("completion_token_ids") is None:
            continue
        out.append(Turn(prompt_ids=step.get("prompt_token_ids") or [],
                        completion_ids=step["completion_token_ids"],
                        logprobs=step.get("logprobs"), version=step.get("policy_version")))
    return out


def merge(turns: list[Turn]) -> list[TokenSequence]:
    """Join turns into sequences where the prefix holds (see the module doc)."""
    sequences: list[TokenSequence] = []
    current: TokenSequence | None = None
    for turn in turns:
        if current is not None:
            before = current.prompt_ids + current.response_ids
            if turn.prompt_ids[:len(before)] == before:
                given = turn.prompt_ids[len(before):]
                _extend(current, given, 0, None, None)
                _extend(current, turn.completion_ids, 1, turn.logprobs, turn.version)
                current.turns += 1
                continue
        current = TokenSequence(prompt_ids=list(turn.prompt_ids))
        _extend(current, turn.completion_ids, 1, turn.logprobs, turn.version)
        current.turns = 1
        sequences.append(current)
    return sequences


def _extend(seq: TokenSequence, ids: list[int], mask: int, logprobs: list[float] | None,
            version: int | None) -> None:
    seq.response_ids += ids
    seq.loss_mask += [mask] * len(ids)
    if mask and (logprobs is None or len(logprobs) != len(ids)):
        seq.logprobs_complete = False
        logprobs = None
    seq.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
    seq.versions += [version if mask and version is not None else -1] * len(ids)
