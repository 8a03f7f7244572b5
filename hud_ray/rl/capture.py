"""A per-rollout capture proxy: an OpenAI-compatible endpoint on 127.0.0.1 in the worker
that any agent's model client can be pointed at, under a rollout source.

    async with capture_proxy(session) as base_url:     # http://127.0.0.1:PORT/v1
        client = AsyncOpenAI(base_url=base_url, api_key="EMPTY")
        ...                                            # the agent's own model calls

hud agents (`hud:...OpenAIChatAgent` and any hud agent whose config takes `base_url`) get
it automatically under a rollout source: the adapter builds the rollout's agent with its
`base_url` set to the proxy (hud_ray.agents.hud_agent).

Each `POST .../chat/completions` goes through the policy transport (hud_ray.rl.policy), so
it is sent to the current policy's base_url and model, waits while the policy is paused
(hold / drain: the agent sees a slow call, not an error), and under `pause("abort")` is
cancelled and sent again after resume. The proxy asks the server for token ids and
logprobs (vLLM's `return_token_ids`, `logprobs`), adds the group's sampling parameters,
and records each call as an `llm` step of the rollout (the same fields the built-in
`openai:` agent fills: tokens, prompt/completion ids, logprobs, `policy_version`), which
is where `Member.tokens()` and the trajectory columns read them. The agent gets the
server's reply as is (plus `hud_ray_policy_version`). Other routes are a 404 naming the
route: the proxy serves chat completions (non-streaming) only.

One proxy per rollout (not per worker): the recording needs no routing key, and its
lifetime is the rollout's agent phase, so nothing outlives a cancelled rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from hud_ray.deadline_hold import DEADLINE_HOLD
from hud_ray.rl.policy import VERSION_FIELD, policy_transport

SAMPLING_KWARGS = ("temperature", "top_p", "max_tokens", "seed", "stop", "presence_penalty",
                   "frequency_penalty")
MAX_HEADER_BYTES = 64 * 1024


def policy_of(session: Any) -> str | None:
    """The rollout source's policy actor name of this rollout (None: not an RL member)."""
    return ((session.task.columns or {}).get("rl") or {}).get("policy")


@contextlib.asynccontextmanager
async def capture_proxy(session: Any, upstream: str | None = None,
                        inner: Any = None) -> AsyncIterator[str]:
    """Serve the proxy for this rollout while the block runs; yields its base URL.
    `upstream`: where calls go while the policy names no base_url (the agent's own);
    `inner`: the httpx transport under the policy's (the endpoint governor's)."""
    name = policy_of(session)
    if not name:
        raise RuntimeError("capture_proxy: this rollout was not started by a rollout source "
                           "with a policy")
    proxy = CaptureProxy(session, name, upstream, inner)
    await proxy.start()
    try:
        yield proxy.base_url
    finally:
        await proxy.close()


class CaptureProxy:
    """127.0.0.1 HTTP/1.1 server (one request per connection) forwarding to the policy."""

    def __init__(self, session: Any, policy_name: str, upstream: str | None = None,
                 inner: Any = None) -> None:
        import httpx

        self.session = session
        self.upstream = (upstream or "http://policy-base-url-not-set.invalid/v1").rstrip("/")
        self.sampling = ((session.task.columns or {}).get("rl") or {}).get("sampling") or {}
        self._client = httpx.AsyncClient(transport=policy_transport(policy_name, inner),
                                         timeout=None)
        self._server: asyncio.Server | None = None
        # The rollout's deadline hold: connection tasks do not run in the agent's context.
        self._hold = DEADLINE_HOLD.get()
        self._conns: set[asyncio.Task[Any]] = set()
        self.base_url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.base_url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._client.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)
        DEADLINE_HOLD.set(self._hold)  # this connection task's own context
        try:
            request = await _read_request(reader)
            if request is None:
                return
            status, headers, body = await self._forward(*request)
            _write_response(writer, status, headers, body)
            await writer.drain()
        except (asyncio.CancelledError, ConnectionError):
            pass  # the rollout ended (or the agent hung up) mid-call: nothing to answer
        finally:
            writer.close()

    async def _forward(self, method: str, path: str, headers: list[tuple[str, str]],
                       body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        if method != "POST" or not path.split("?")[0].rstrip("/").endswith("/chat/completions"):
            return 404, [("content-type", "application/json")], json.dumps({"error": {
                "message": f"hud_ray capture proxy: no route {method} {path} (it serves "
                           "POST /v1/chat/completions)"}}).encode()
        if b'"stream": true' in body.replace(b'"stream":true', b'"stream": true'):
            return 400, [("content-type", "application/json")], json.dumps({"error": {
                "message": "hud_ray capture proxy: streamed completions are not captured; "
                           "call with stream=false"}}).encode()
        sent = [(k, v) for k, v in headers if k.lower() not in
                ("host", "content-length", "connection", "accept-encoding")]
        t0 = time.monotonic()
        try:
            # The policy transport swaps in the policy's base_url and model when set.
            response = await self._client.post(f"{self.upstream}/chat/completions",
                                               headers=sent,
                                               content=self._with_capture_options(body))
        except Exception as exc:  # the policy endpoint is down: the agent hears a 502
            detail = f"{type(exc).__name__}: {exc}"
            self.session.record_llm(latency_s=time.monotonic() - t0, error=detail)
            return 502, [("content-type", "application/json")], json.dumps(
                {"error": {"message": f"hud_ray capture proxy: {detail}"}}).encode()
        self._record(response.status_code, response.content, time.monotonic() - t0)
        kept = [(k, v) for k, v in response.headers.items() if k.lower() not in
                ("content-length", "content-encoding", "transfer-encoding", "connection")]
        return response.status_code, kept, response.content

    def _with_capture_options(self, body: bytes) -> bytes:
        """Ask for token ids and logprobs; the group's sampling parameters on top."""
        try:
            request = json.loads(body)
        except ValueError:
            return body
        if not isinstance(request, dict):
            return body
        request["return_token_ids"] = True
        request.setdefault("logprobs", True)
        for key, value in self.sampling.items():
            request[key] = value  # vLLM takes top_k, min_p, ... at the top level too
        return json.dumps(request).encode()

    def _record(self, status: int, body: bytes, latency_s: float) -> None:
        try:
            reply = json.loads(body)
        except ValueError:
            reply = None
        if status != 200 or not isinstance(reply, dict) or not reply.get("choices"):
            detail = body[:500].decode("utf-8", "replace")
            self.session.record_llm(latency_s=latency_s, error=f"HTTP {status}: {detail}")
            return
        self.session.record_llm(latency_s=latency_s, **completion_facts(reply))


def completion_facts(reply: dict[str, Any]) -> dict[str, Any]:
    """The `llm` step fields of a chat completion reply (a JSON dict)."""
    choice = reply["choices"][0]
    message = choice.get("message") or {}
    usage = reply.get("usage") or {}
    facts: dict[str, Any] = {
        "model": reply.get("model"), "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "content": message.get("content"), "finish_reason": choice.get("finish_reason"),
        "policy_version": reply.get(VERSION_FIELD),
        **{key: reply[field] for key, field in (("token_versions", "hud_ray_token_versions"),
                                                ("partial_versions", "hud_ray_partial_versions"))
           if reply.get(field)},
        "tool_calls": [{"name": c.get("function", {}).get("name"),
                        "arguments": c.get("function", {}).get("arguments")}
                       for c in message.get("tool_calls") or []] or None,
    }
    prompt_ids = reply.get("prompt_token_ids", choice.get("prompt_token_ids"))
    if prompt_ids is not None:
        facts["prompt_token_ids"] = list(prompt_ids)
    if choice.get("token_ids") is not None:
        facts["completion_token_ids"] = list(choice["token_ids"])
    content = (choice.get("logprobs") or {}).get("content")
    if content:
        facts["logprobs"] = [float(t["logprob"]) for t in content]
    return facts


async def _read_request(reader: asyncio.StreamReader
                        ) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    """One HTTP/1.1 request with a Content-Length body (what OpenAI clients send)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    if len(head) > MAX_HEADER_BYTES:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
               if k.strip()]
    length = int(next((v for k, v in headers if k.lower() == "content-length"), "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


def _write_response(writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]],
                    body: bytes) -> None:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
             *(f"{k}: {v}" for k, v in headers), f"content-length: {len(body)}",
             "connection: close", "", ""]
    writer.write("\r\n".join(lines).encode("latin-1") + body)
