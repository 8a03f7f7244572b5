"""Merging a rollout's turns into trainable sequences."""

from __future__ import annotations

import json

from hud_ray.rl.tokens import Turn, merge, turns_of


def test_turns_whose_prefix_holds_become_one_sequence_with_a_loss_mask():
    first = Turn(prompt_ids=[1, 2, 3], completion_ids=[4, 5], logprobs=[-0.1, -0.2], version=3)
    # the second prompt = all before it + a tool result (6, 7)
    second = Turn(prompt_ids=[1, 2, 3, 4, 5, 6, 7], completion_ids=[8], logprobs=[-0.3],
                  version=4)
    (seq,) = merge([first, second])
    assert seq.prompt_ids == [1, 2, 3] and seq.response_ids == [4, 5, 6, 7, 8]
    assert seq.loss_mask == [1, 1, 0, 0, 1] and seq.turns == 2
    assert seq.logprobs == [-0.1, -0.2, 0.0, 0.0, -0.3]
    assert seq.versions == [3, 3, -1, -1, 4] and seq.logprobs_complete


def test_a_broken_prefix_starts_a_new_sequence_and_missing_logprobs_are_flagged():
    first = Turn(prompt_ids=[1, 2], completion_ids=[3], logprobs=[-0.5])
    rewritten = Turn(prompt_ids=[1, 9, 9], completion_ids=[4, 5], logprobs=None)
    one, two = merge([first, rewritten])
    assert (one.prompt_ids, one.response_ids) == ([1, 2], [3])
    assert (two.prompt_ids, two.response_ids, two.loss_mask) == ([1, 9, 9], [4, 5], [1, 1])
    assert one.logprobs_complete and not two.logprobs_complete


def test_turns_are_read_from_a_rows_steps_and_calls_without_ids_skipped():
    steps = [{"kind": "llm", "prompt_token_ids": [1], "completion_token_ids": [2],
              "logprobs": [-1.0], "policy_version": 7},
             {"kind": "tool", "name": "bash"},
             {"kind": "llm", "content": "no ids from this endpoint"}]
    (turn,) = turns_of({"steps": json.dumps(steps)})
    assert turn == Turn(prompt_ids=[1], completion_ids=[2], logprobs=[-1.0], version=7)
