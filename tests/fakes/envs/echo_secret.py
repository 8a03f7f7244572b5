"""An env that leaks its environment: one template answers, one fails quoting a secret.

Used by tests/distributed/test_secrets.py: whatever the env puts in an error, the run's
files and logs must not hold the secret value.
"""

from __future__ import annotations

import os

from hud_ray.envkit import Environment

env = Environment(name="echo_secret", version="1.0.0")


@env.template("fine", description="solved by any answer")
async def fine(word: str):
    yield f"Say {word}."
    yield 1.0


@env.template("leak", description="fails naming the env's API key")
async def leak(word: str):
    yield f"Say {word}."
    raise RuntimeError(f"upstream refused key {os.environ.get('OPENAI_API_KEY')!r} "
                       f"at {os.environ.get('UPSTREAM_URL')}")
