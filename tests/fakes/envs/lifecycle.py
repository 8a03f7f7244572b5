"""Hooks and cleanup: writes markers to $LIFECYCLE_DIR so a test can see what ran."""

from __future__ import annotations

import os
from pathlib import Path

from hud_ray.envkit import Environment

env = Environment("lifecycle")
MARKS = Path(os.environ["LIFECYCLE_DIR"])


def mark(name: str) -> None:
    with (MARKS / "marks.txt").open("a") as fh:
        fh.write(name + "\n")


@env.initialize  # hud's spelling of on_start
async def first_start() -> None:
    mark("start")


@env.shutdown
async def stop_a() -> None:
    mark("stop-a")


@env.shutdown
async def stop_b() -> None:
    mark("stop-b")


@env.template(id="held")
async def held(tag: str):
    try:
        answer = yield f"holding {tag}"
        yield float(answer == tag)
    finally:
        mark(f"cleanup-{tag}")
