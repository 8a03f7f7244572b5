"""A native hud_ray agent (no hud) that uses the env's MCP tools through `session.mcp()`
and its raw `kv` capability through `session.open_tunnel()`: the same code on every
provider, since both go through the sandbox's `tunnel.open`."""

import json
import re


async def agent(session):
    prompt = session.prompt_text
    if "kv capability" in prompt:
        key = re.search(r"key (\w+)", prompt)[1]
        reader, writer = await session.open_tunnel("kv")
        writer.write(f"{key}\n".encode())
        await writer.drain()
        value = (await reader.readline()).decode().strip()
        writer.close()
        return value
    tools = await session.mcp("tools")
    if m := re.search(r"compute (-?\d+) \+ (-?\d+)\.", prompt):
        result = await tools.call_tool("add", {"a": int(m[1]), "b": int(m[2])})
        session.record_step("tool", name="add", result=result.content[0].text)
        return result.content[0].text
    key = re.search(r"key (\w+)", prompt)[1]
    result = await tools.call_tool("lookup", {"key": key})
    session.record_step("tool", name="lookup", result=result.content[0].text)
    return json.dumps({"value": result.content[0].text})
