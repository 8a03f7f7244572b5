"""A hud Agent written as hud's docs write one: it reaches the env's raw `kv` capability
through `run.client.binding("kv")` (hud's client forwards it over `tunnel.open`)."""

import asyncio
import re
from urllib.parse import urlsplit

from hud.agents.base import Agent
from hud.types import Step


class KVAgent(Agent):
    async def __call__(self, run) -> None:
        key = re.search(r"key (\w+)", run.prompt_text)[1]
        url = urlsplit(run.client.binding("kv").url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(f"{key}\n".encode())
        await writer.drain()
        value = (await reader.readline()).decode().strip()
        writer.close()
        run.record(Step(source="system", extra={"kv": {key: value}}))
        run.trace.content = value
