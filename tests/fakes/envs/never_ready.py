"""An env whose start hook never finishes: the server never prints its port."""

import asyncio

from hud_ray.envkit import Environment

env = Environment("never-ready")


@env.on_start
async def warm_cache() -> None:
    print("warming cache: 0/3 shards", flush=True)
    print("warming cache: waiting for shard 1 (upstream not answering)", flush=True)
    await asyncio.Event().wait()


@env.template(id="count")
async def count():
    yield "unreachable"
    yield 0.0
