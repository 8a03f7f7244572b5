"""An envkit env whose templates answer with what a grader must never accept, or with a
frame too big for the wire. Each must become one env_error row that says what was wrong."""

from __future__ import annotations

from hud_ray.envkit import Environment
from hud_ray.wire import FRAME_LIMIT_BYTES

env = Environment("bad-grades", version="0.0.1")


@env.template(id="string_grade")
async def string_grade():
    yield "Say anything."
    yield "excellent"  # a verdict in words, not a score


@env.template(id="no_score")
async def no_score():
    yield "Say anything."
    yield {"reward": 1.0, "info": {"note": "score key misspelt"}}


@env.template(id="inf_score")
async def inf_score():
    yield "Say anything."
    yield float("inf")


@env.template(id="huge_prompt")
async def huge_prompt():
    yield "x" * (FRAME_LIMIT_BYTES + 1024)  # the reply frame cannot fit the wire
    yield 1.0


@env.template(id="echo_len")
async def echo_len():
    answer = yield "Answer with anything."
    yield float(len(str(answer)) > 0)
