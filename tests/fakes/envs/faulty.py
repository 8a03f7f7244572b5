"""An envkit env whose templates fail in every way a rollout must classify."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from hud_ray.envkit import Environment

env = Environment("faulty", version="0.0.1")


@env.template(id="ok")
async def ok(word: str = "abc"):
    answer = yield f"Reverse the word '{word}'. Answer with the reversed word only."
    yield float(str(answer).strip() == word[::-1])


@env.template(id="hang_grade")
async def hang_grade():
    yield "Say anything; grading never finishes."
    await asyncio.Event().wait()  # cooperative hang: tasks.cancel can interrupt it
    yield 1.0


@env.template(id="block_grade")
async def block_grade():
    yield "Say anything; grading blocks the whole server."
    time.sleep(3600)  # noqa: ASYNC251 - a hard hang on purpose: the loop is stuck, only SIGKILL helps
    yield 1.0


@env.template(id="fail_start")
async def fail_start():
    raise RuntimeError("fixture database is missing")
    yield "unreachable"


@env.template(id="die_in_grade")
async def die_in_grade():
    yield "Say anything; the env process dies while grading."
    print("grader: out of memory, giving up", flush=True)
    print("grader: exiting with status 7", file=sys.stderr, flush=True)
    os._exit(7)
    yield 1.0


@env.template(id="nan_score")
async def nan_score():
    yield "Say anything."
    yield float("nan")
