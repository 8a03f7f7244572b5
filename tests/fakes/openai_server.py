"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 (no model, no network).

`ScriptedModel` answers `POST /v1/chat/completions` from a policy: a function of the
request (messages + tools) returning either a tool call or a final answer. Every request
and the tool calls it answered with are logged per conversation (keyed by its first user
message), so a test can compare two agent runs call for call. Usage is reported per
response like a real endpoint (prompt tokens = request bytes / 4, completion = 7).

    with ScriptedModel(policy) as model:
        agent = OpenAIChatAgent.load({"base_url": model.base_url, "api_key": "x", ...})
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "seed")
Policy = Callable[[list[dict[str, Any]], list[dict[str, Any]]], dict[str, Any]]


def text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def tool_named(tools: list[dict[str, Any]], suffix: str) -> str:
    """The offered tool whose name ends with `suffix` (agents may prefix MCP tool names)."""
    names = [t["function"]["name"] for t in tools if t.get("type") == "function"]
    matches = [n for n in names if n == suffix or n.endswith(f"_{suffix}") or n.endswith(suffix)]
    if not matches:
        raise LookupError(f"no tool ending in {suffix!r} among {names}")
    return matches[0]


def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def answer(text: str) -> dict[str, Any]:
    return {"content": text}


class ScriptedModel:
    def __init__(self, policy: Policy, model: str = "scripted-1",
                 limit_per_s: int | None = None,
                 refuse_first: int = 0,
                 latency_s: Callable[[], float] | None = None) -> None:
        self.policy = policy
        self.model = model
        # RL: the version of the weights being served (a trainer's test bumps it), reported
        # in every reply as `weight_version`, and per request (policy version header, the
        # weights' version when answered) in `served`; `latency_s()` is each reply's delay.
        self.weight_version = 0
        self.latency_s = latency_s
        self.served: list[tuple[str | None, int]] = []
        self.sampling_seen: list[dict[str, Any]] = []  # sampling parameters per request
        # 429 mode: more than `limit_per_s` requests in the last second get
        # `429 Too Many Requests` with `Retry-After: 1`, as a rate-limited API answers.
        self.limit_per_s = limit_per_s
        # and the first `refuse_first` requests get it whatever the rate: a test that
        # needs 429s to happen cannot depend on how fast a loaded machine sends.
        self.refuse_first = refuse_first
        self.rate_limited = 0
        self._recent: deque[float] = deque()
        self.answered_at: list[float] = []  # when each answered (not 429) request came in
        self.conversations: dict[str, list[dict[str, Any]]] = defaultdict(list)
        # per conversation: (prompt_tokens, completion_tokens, prompt ids, completion ids,
        # logprobs) of each response, as sent
        self.usage: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.requests = 0
        # Streaming (`stream: true`): one token per character of the answer, `token_s`
        # apart; token id = ord(char) * 100 + weight version, logprob = -0.01 * (version
        # + 1), so a test can tell which weights sampled each token. A request with
        # vLLM's `continue_final_message` continues its last (assistant) message.
        self.token_s = 0.0
        self.streamed_tokens = 0
        self.continuations = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedModel:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def over_limit(self) -> bool:
        """Count this request against the per-second limit; True: answer 429."""
        with self._lock:
            if self.rate_limited < self.refuse_first:
                self.rate_limited += 1
                return True
            if self.limit_per_s is None:
                return False
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.limit_per_s:
                self.rate_limited += 1
                return True
            self._recent.append(now)
            return False

    def tool_calls(self) -> dict[str, list[tuple[str, str]]]:
        """Per conversation: (tool name, JSON arguments) in the order the model asked."""
        return {key: [(c["name"], json.dumps(c["arguments"], sort_keys=True))
                      for turn in turns for c in turn.get("tool_calls", [])]
                for key, turns in self.conversations.items()}

    def respond(self, request: dict[str, Any]) -> dict[str, Any]:
        messages = request.get("messages") or []
        tools = request.get("tools") or []
        first_user = next((text_of(m) for m in messages if m.get("role") == "user"), "")
        decision = self.policy(messages, tools)
        with self._lock:
            self.sampling_seen.append({k: request[k] for k in SAMPLING if k in request})
            self.requests += 1
            self.answered_at.append(time.monotonic())
            self.conversations[first_user].append(decision)
        message: dict[str, Any] = {"role": "assistant", "content": decision.get("content")}
        finish = "stop"
        if decision.get("tool_calls"):
            message["tool_calls"] = [
                {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]
                              if isinstance(c["arguments"], str) else json.dumps(c["arguments"])}}
                for c in decision["tool_calls"]]
            finish = "tool_calls"
        if self.latency_s is not None:
            time.sleep(self.latency_s())  # this request's own thread
        prompt_tokens = len(json.dumps(messages)) // 4
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": 0, "model": request.get("model") or self.model, "choices": [choice],
            "weight_version": self.weight_version,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 7,
                      "total_tokens": prompt_tokens + 7},
        }
        prompt_ids = completion_ids = logprobs = None
        if request.get("return_token_ids"):  # vLLM's extension
            prompt_ids = [(7 * i + prompt_tokens) % 50_000 for i in range(prompt_tokens)]
            completion_ids = [(self.requests * 13 + i) % 50_000 for i in range(7)]
            reply["prompt_token_ids"], choice["token_ids"] = prompt_ids, completion_ids
        if request.get("logprobs"):
            logprobs = [-0.125 * (i + 1) for i in range(7)]
            choice["logprobs"] = {"content": [
                {"token": f"t{i}", "logprob": lp, "bytes": None, "top_logprobs": []}
                for i, lp in enumerate(logprobs)]}
        with self._lock:
            self.usage[first_user].append((prompt_tokens, 7, prompt_ids, completion_ids, logprobs))
        return reply

    def stream(self, handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
        """Answer as server-sent events, token by token (see `token_s`)."""
        messages = request.get("messages") or []
        kept = ""
        if request.get("continue_final_message") and messages[-1].get("role") == "assistant":
            kept, messages = text_of(messages[-1]), messages[:-1]
        decision = self.policy(messages, request.get("tools") or [])
        version = self.weight_version
        with self._lock:
            self.requests += 1
            self.continuations += bool(kept)
            self.served.append((handler.headers.get("x-hud-ray-policy-version"), version))
            self.sampling_seen.append({k: request[k] for k in SAMPLING if k in request})
        content = decision.get("content") or ""
        rest = content[len(kept):] if content.startswith(kept) else content
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.end_headers()
        prompt_tokens = len(json.dumps(messages)) // 4
        head: dict[str, Any] = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        if request.get("return_token_ids"):
            head["prompt_token_ids"] = [(7 * i + prompt_tokens) % 50_000
                                        for i in range(prompt_tokens)]
        chunks = [head]
        for char in rest:
            chunks.append({"choices": [{"index": 0, "delta": {"content": char},
                                        "token_ids": [ord(char) * 100 + version],
                                        "logprobs": {"content": [{
                                            "token": char, "logprob": -0.01 * (version + 1),
                                            "bytes": None, "top_logprobs": []}]}}]})
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(rest),
                                 "total_tokens": prompt_tokens + len(rest)}})
        try:
            for i, chunk in enumerate(chunks):
                if 0 < i < len(chunks) - 1:
                    time.sleep(self.token_s)  # this request's own thread
                    with self._lock:
                        self.streamed_tokens += 1
                chunk.update(id="chatcmpl-s", object="chat.completion.chunk",
                             model=request.get("model") or self.model)
                handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                handler.wfile.flush()
            handler.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client cancelled mid-stream (an abort)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if not self.path.rstrip("/").endswith("/models"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                self._send(200, {"object": "list", "data": [
                    {"id": model.model, "object": "model", "owned_by": "scripted"}]})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if model.over_limit():
                    self._send(429, {"error": {"message": "Rate limit reached",
                                               "type": "requests", "code": "rate_limit"}},
                               {"retry-after": "1"})
                    return
                if json.loads(body or b"{}").get("stream"):
                    model.stream(self, json.loads(body))
                    return
                try:
                    reply = model.respond(json.loads(body))
                    with model._lock:
                        model.served.append((self.headers.get("x-hud-ray-policy-version"),
                                             reply["weight_version"]))
                except Exception as exc:  # a policy bug shows up in the agent's error
                    self._send(500, {"error": {"message": f"{type(exc).__name__}: {exc}"}})
                    return
                self._send(200, reply)

            def _send(self, code: int, payload: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
