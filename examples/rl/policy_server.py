"""A toy "policy" served over the OpenAI chat-completions API, for the GRPO example: no
model, no weights. It answers the task's right answer with a probability that grows
with its weight version (as if training helped), after a long-tailed latency, and
reports the version that answered (`weight_version`) in every reply. `POST /update`
loads the "next weights" (version + 1), as a trainer's weight sync would.

    python examples/rl/policy_server.py 8765     # http://127.0.0.1:8765/v1
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "toy-policy"


class PolicyServer:
    def __init__(self, port: int = 0, median_latency_s: float = 0.05) -> None:
        self.version = 0
        self.median_latency_s = median_latency_s
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def p_right(self) -> float:
        return 0.2 + 0.7 * (1.0 - math.exp(-self.version / 15.0))

    def start(self) -> PolicyServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reply(self, request: dict[str, Any]) -> dict[str, Any]:
        tail = 10.0 if random.random() < 0.05 else 1.0
        time.sleep(random.expovariate(1.0 / self.median_latency_s) * tail)
        version = self.version
        text = "a" if random.random() < self.p_right() else "b"
        return {"id": "toy", "object": "chat.completion", "created": 0, "model": MODEL,
                "weight_version": version,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.rstrip("/").endswith("/update"):
                    with server._lock:
                        server.version += 1
                    self._send({"version": server.version})
                    return
                self._send(server.reply(json.loads(body or b"{}")))

            def _send(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


if __name__ == "__main__":
    srv = PolicyServer(int(sys.argv[1]) if len(sys.argv) > 1 else 8765).start()
    print(srv.base_url, flush=True)
    threading.Event().wait()
