"""Client for HUD's env wire protocol: line-delimited JSON-RPC 2.0 over TCP.

One control connection per rollout. A reader task matches replies to request ids, so a
`tasks.cancel` or a heartbeat can go out while a long `tasks.grade` is pending (hud's
server runs start/grade beside its read loop for exactly this). Every failure is one of
three typed errors, so a rollout can classify it:

- `TransportError`: the connection could not be made or broke (refused, reset, EOF).
- `WireTimeout`: no reply within the call's timeout (also a `TimeoutError`).
- `ProtocolError`: the peer spoke, but wrongly (garbage, oversized frame, bad shape);
  `RemoteError` is its subclass for a JSON-RPC error object returned by the env.

One rule maps them to a rollout's status, the same in every phase (`hello`, `tasks.start`,
`tasks.grade`, heartbeats):

- `ProtocolError` — garbage (not JSON, not an object, no `result`, a reply without its
  required fields, an incoming frame over 16 MiB) or a JSON-RPC error from the env — is
  `env_error`, not retried: the peer answered, and another sandbox of the same image would
  answer the same. (Our own unencodable or oversized frame is the agent's or the task's.)
- `TransportError` — refused, reset, EOF, closed mid-frame — is `infra_error`, retried in
  a fresh sandbox: the sandbox or the network went away.
- `WireTimeout` — silence — is a `timeout` in a rollout phase. While waiting for `hello`
  the startup budget running out is `infra_error` when the last attempt was refused or
  closed (the sandbox never came up), and `env_error` (`NeverAnswered`) when the env
  accepted the connection and then never answered: a server that does not speak this
  protocol, or hangs, the same in every sandbox of its image.

Framing and the error classes live in `hud_ray.wire_frames`, the connection (request ids,
reader task, heartbeat) in `hud_ray.wire_connection`, tunnels in `hud_ray.wire_tunnel`;
import them from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from hud_ray.wire_connection import EnvConnection
from hud_ray.wire_frames import (
    FRAME_LIMIT_BYTES,
    FrameTooLarge,
    NeverAnswered,
    ProtocolError,
    RemoteError,
    TransportError,
    UnencodableFrame,
    WireError,
    WireTimeout,
    _short,
    encode_frame,
    open_stream,
    parse_url,
    read_frame,
    uses_tls,
)
from hud_ray.wire_tunnel import Forwarder, TunnelForwarder, open_tunnel, splice

__all__ = [
    "FRAME_LIMIT_BYTES", "EnvClient", "EnvConnection", "Forwarder", "FrameTooLarge",
    "NeverAnswered", "ProtocolError", "RemoteError", "TransportError", "TunnelForwarder", "UnencodableFrame", "WireError",
    "WireTimeout", "encode_frame", "open_stream", "open_tunnel", "parse_url", "read_frame",
    "splice", "uses_tls",
]


class EnvClient(EnvConnection):
    """A control session with one env server. Build it with `await EnvClient.connect(...)`."""

    # --- connection ------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        preamble: bytes | None = None,
        ready_timeout_s: float = 240.0,
        retry_interval_s: float = 0.5,
        call_timeout_s: float = 60.0,
        heartbeat_s: float | None = 120.0,
        hello_params: dict[str, Any] | None = None,
    ) -> EnvClient:
        """Connect and say `hello`, retrying until the env is ready.

        Refused connections, EOF and silence mean "not ready yet" (a forwarded port
        accepts before the env serves); a JSON-RPC error or garbage is a real answer
        and fails at once.
        """
        host, port = parse_url(url)
        deadline = time.monotonic() + ready_timeout_s
        last_error: Exception | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if isinstance(last_error, WireTimeout) and last_error.after_accept:
                    raise NeverAnswered(
                        f"env at {url} accepted connections but never answered hello within "
                        f"{ready_timeout_s:.1f}s (last: {last_error})")
                raise WireTimeout(
                    f"env at {url} not ready after {ready_timeout_s:.1f}s (last: {last_error})"
                )
            attempt_s = min(remaining, max(5.0, retry_interval_s))
            client: EnvClient | None = None
            try:
                reader, writer = await open_stream(
                    host, port, preamble=preamble, timeout_s=attempt_s, tls=uses_tls(url)
                )
                client = cls(
                    reader, writer, url=url, preamble=preamble, call_timeout_s=call_timeout_s
                )
                await client.hello(hello_params, timeout_s=attempt_s)
            except (TransportError, WireTimeout) as exc:
                if isinstance(exc, WireTimeout) and client is not None:
                    exc.after_accept = True  # connected: silence, not a refusal
                last_error = exc
                if client is not None:
                    await client.close()
                await asyncio.sleep(min(retry_interval_s, max(0.0, deadline - time.monotonic())))
                continue
            except BaseException:
                if client is not None:
                    await client.close()
                raise
            if heartbeat_s:
                client.start_heartbeat(heartbeat_s)
            return client

    # --- calls -----------------------------------------------------------------------
    async def hello(
        self, params: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        result = await self.call("hello", params or {}, timeout_s)
        session_id = result.get("session_id")
        if not isinstance(session_id, str):
            raise ProtocolError(f"hello: reply has no session_id: {result!r}")
        self.session_id = session_id
        self.env_info = result.get("env") or {}
        bindings = result.get("bindings") or []
        if not isinstance(bindings, list):
            raise ProtocolError(f"hello: bindings is not a list: {bindings!r}")
        self.bindings = bindings
        return result

    async def list_tasks(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        return (await self.call("tasks.list", {}, timeout_s)).get("tasks", [])

    async def start(
        self, template_id: str, args: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        result = await self.call("tasks.start", {"id": template_id, "args": args}, timeout_s)
        if "prompt" not in result:
            raise ProtocolError(f"tasks.start: reply has no prompt: {_short(result)}")
        return result

    async def grade(self, answer: Any, timeout_s: float | None = None) -> dict[str, Any]:
        result = await self.call("tasks.grade", {"answer": answer}, timeout_s)
        score = result.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ProtocolError(f"tasks.grade: score is not a number: {_short(result)}")
        if not math.isfinite(score):
            raise ProtocolError(f"tasks.grade: score is not finite: {score!r}")
        return result

    async def cancel(self, timeout_s: float = 5.0) -> None:
        await self.call("tasks.cancel", {}, timeout_s)

    async def bye(self, timeout_s: float = 2.0) -> None:
        """Polite goodbye, then close; never raises (teardown path)."""
        with contextlib.suppress(WireError):
            await self.call("bye", {}, timeout_s)
        await self.close()

    # --- tunnels ---------------------------------------------------------------------
    async def open_tunnel(
        self, capability: str, timeout_s: float = 30.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw byte stream to `capability` inside the sandbox (via `tunnel.open`)."""
        return await open_tunnel(self.url, capability, preamble=self._preamble, timeout_s=timeout_s)

    async def forward(self, capability: str, local_port: int = 0) -> TunnelForwarder:
        """Listen on 127.0.0.1 and splice each connection to `capability`."""
        forwarder = TunnelForwarder(self.url, capability, preamble=self._preamble)
        await forwarder.start(local_port)
        return forwarder
