"""`await session.mcp(name)`: an MCP client session on a capability inside the sandbox.

The env publishes an MCP server as a binding (`hello` → `{"name": "tools", "protocol":
"mcp/2025-11-25", "url": "http://127.0.0.1:8765/mcp"}`): an address inside the sandbox,
which only the `local` provider's sandboxes share with the agent. As hud's own client
does, hud_ray listens on a loopback port of the agent's process and carries each
connection to the capability through the env's `tunnel.open` (with the endpoint's token
gate preamble), then points the `mcp` package's client at that port. So one native agent
reaches its tools the same way on local, attach, docker, modal and daytona.

The session is opened once per name and closed when the agent phase ends. Open it from
the agent's own task (the `mcp` client's task groups are tied to the task that opens
them).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from mcp import ClientSession

    from hud_ray.wire import EnvClient

MCP_PROTOCOL = "mcp"


class McpBindingError(LookupError):
    """No MCP capability of that name (the message lists what the env publishes)."""


def find_binding(bindings: list[dict[str, Any]], ref: str | None) -> dict[str, Any]:
    """The binding named `ref` (or the env's only MCP binding when `ref` is None)."""
    mcp = [b for b in bindings if str(b.get("protocol", "")).split("/", 1)[0] == MCP_PROTOCOL]
    matches = mcp if ref is None else [b for b in bindings if b.get("name") == ref]
    if len(matches) == 1:
        binding = matches[0]
        if binding in mcp:
            return binding
        raise McpBindingError(f"capability {ref!r} speaks {binding.get('protocol')!r}, not "
                              "MCP: use session.open_tunnel() for a raw stream")
    published = ", ".join(f"{b.get('name')} ({b.get('protocol')})" for b in bindings) or "none"
    if not matches:
        wanted = f"no capability {ref!r}" if ref else "no MCP capability"
        raise McpBindingError(f"{wanted} in this env (it publishes: {published})")
    raise McpBindingError(f"several MCP capabilities ({published}): name one, "
                          "session.mcp('tools')")


def local_url(url: str, port: int) -> str:
    """The capability's URL with its host:port replaced by the local forwarder's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path or "/",
                       parts.query, parts.fragment))


async def open_mcp_session(client: EnvClient, binding: dict[str, Any],
                           stack: contextlib.AsyncExitStack) -> ClientSession:
    """Forwarder + transport + initialised `mcp.ClientSession`, all closed by `stack`."""
    try:
        from mcp import ClientSession
    except ImportError as exc:
        raise RuntimeError(f"session.mcp() needs the mcp package ({exc}): "
                           "pip install 'hud-ray[mcp]'") from None
    forwarder = await client.forward(str(binding["name"]))
    stack.push_async_callback(forwarder.close)
    params = binding.get("params") or {}
    url = local_url(str(binding["url"]), forwarder.port)
    scheme = urlsplit(url).scheme
    transport = params.get("transport") or ("websocket" if scheme in ("ws", "wss")
                                            else "streamable-http")
    headers = {"Authorization": f"Bearer {params['auth_token']}"} if params.get("auth_token") else None
    if transport == "streamable-http":
        from mcp.client.streamable_http import streamablehttp_client

        read, write, _ = await stack.enter_async_context(streamablehttp_client(url, headers=headers))
    elif transport == "sse":
        from mcp.client.sse import sse_client

        read, write = await stack.enter_async_context(sse_client(url, headers=headers))
    elif transport == "websocket":
        from mcp.client.websocket import websocket_client

        read, write = await stack.enter_async_context(websocket_client(url))
    else:
        raise McpBindingError(f"capability {binding['name']!r}: unknown MCP transport "
                              f"{transport!r}")
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session
