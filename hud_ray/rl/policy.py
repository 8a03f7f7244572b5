"""The trainer's current policy, cluster-wide: which endpoint and model serve it, its
version, and whether model calls may go (pause / resume around a weight update).

One Ray actor per rollout source (`hud-ray-policy:<run_id>`, owned by the trainer's
driver). Agents reach it through `PolicyTransport`, an httpx transport under their model
client: the built-in `openai:` agent gets it automatically under a rollout source, any
other agent through `policy_http_client(session)`. Each model call then

1. waits while the policy is paused (the agent sees a slow call, not an error),
2. goes to the current `base_url` and `model` (the request's own are replaced),
3. carries the version it is sent under (`x-hud-ray-policy-version` header) and is
   answered with it that served it (`hud_ray_policy_version` in the JSON
   body, recorded per turn by the `openai:` agent), and
4. under `pause("abort")` is cancelled mid-flight and sent again after `resume()`.

Pause modes: `hold` blocks new model calls and returns at once; `drain` blocks new calls
and returns when the in-flight ones have finished; `abort` blocks new calls, cancels the
in-flight ones (each is sent again after resume, to the new weights) and returns when
none is in flight. Sandboxes are untouched by a pause: a rollout waiting on its model
call keeps its sandbox, and its deadline clock keeps running (set `timeout_s` to cover
the longest weight update).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

NAMESPACE = "hud_ray"
VERSION_FIELD = "hud_ray_policy_version"
PauseMode = Literal["drain", "hold", "abort"]


def actor_name(run_id: str) -> str:
    return f"hud-ray-policy:{run_id}"


class PolicyStateImpl:
    """The state and its waits, without Ray (the actor wraps it)."""

    def __init__(self, version: int, base_url: str | None, model: str | None) -> None:
        self.version, self.base_url, self.model = version, base_url, model
        self.paused: str | None = None
        self.in_flight = 0
        self.aborts = 0  # bumped by each pause("abort"): in-flight calls of older epochs end
        self.calls = 0
        self.aborted_calls = 0
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def admit(self) -> dict[str, Any]:
        while self.paused is not None:
            await self._changed.wait()
        self.in_flight += 1
        self.calls += 1
        return {"version": self.version, "base_url": self.base_url, "model": self.model,
                "epoch": self.aborts}

    def done(self, aborted: bool = False) -> None:
        self.in_flight -= 1
        self.aborted_calls += aborted
        self._notify()

    async def wait_abort(self, epoch: int) -> None:
        while self.aborts == epoch:
            await self._changed.wait()

    def set(self, version: int, base_url: str | None, model: str | None) -> None:
        self.version = version
        self.base_url = base_url or self.base_url
        self.model = model or self.model
        self._notify()

    async def pause(self, mode: str) -> None:
        self.paused = mode
        if mode == "abort":
            self.aborts += 1
        self._notify()
        if mode in ("drain", "abort"):
            while self.in_flight:
                await self._changed.wait()

    def resume(self) -> None:
        self.paused = None
        self._notify()

    def snapshot(self) -> dict[str, Any]:
        return {"version": self.version, "base_url": self.base_url, "model": self.model,
                "paused": self.paused, "in_flight": self.in_flight, "calls": self.calls,
                "aborted_calls": self.aborted_calls}


def start_policy_actor(run_id: str, version: int, base_url: str | None,
                       model: str | None) -> Any:
    import ray

    actor_cls = ray.remote(num_cpus=0, max_concurrency=100_000)(PolicyStateImpl)
    return actor_cls.options(name=actor_name(run_id), namespace=NAMESPACE,
                             get_if_exists=True).remote(version, base_url, model)


def check_endpoint(base_url: str, model: str | None, timeout_s: float = 10.0) -> None:
    """An endpoint that does not answer `GET /models`, or does not list `model`, is an
    unknown policy endpoint: one error naming it, before any rollout uses it."""
    import httpx

    url = base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, timeout=timeout_s)
        response.raise_for_status()
        served = [m.get("id") for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise ValueError(f"policy endpoint {base_url}: GET {url} failed "
                         f"({type(exc).__name__}: {exc}); is the inference server up?") from None
    if model is not None and model not in served:
        raise ValueError(f"policy endpoint {base_url} does not serve model {model!r} "
                         f"(it serves: {', '.join(map(str, served)) or 'nothing'})")


def policy_transport(name: str, inner: Any = None) -> Any:
    """An httpx transport that sends each model call under the named policy (module doc)."""
    import httpx

    class PolicyTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = inner or httpx.AsyncHTTPTransport()
            self._actor: Any = None

        def actor(self) -> Any:
            if self._actor is None:
                import ray

                self._actor = ray.get_actor(name, namespace=NAMESPACE)
            return self._actor

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            actor = self.actor()
            while True:
                state = await actor.admit.remote()
                sent = _routed(request, state)
                call = asyncio.ensure_future(self._send(sent))
                abort = asyncio.ensure_future(actor.wait_abort.remote(state["epoch"]))
                try:
                    await asyncio.wait({call, abort}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    abort.cancel()
                if not call.done():  # aborted for a weight update: send again after it
                    call.cancel()
                    await asyncio.gather(call, return_exceptions=True)
                    actor.done.remote(True)
                    continue
                actor.done.remote(False)
                return _stamped(call.result(), state["version"], request)

        async def _send(self, request: httpx.Request) -> tuple[httpx.Response, bytes]:
            response = await self.inner.handle_async_request(request)
            return response, await response.aread()

        async def aclose(self) -> None:
            await self.inner.aclose()

    return PolicyTransport()


def _routed(request: Any, state: dict[str, Any]) -> Any:
    """The request as the current policy serves it: its base URL and model replaced."""
    import httpx

    url = request.url
    if state["base_url"]:
        base = httpx.URL(state["base_url"].rstrip("/") + "/")
        tail = url.path.rsplit("/chat/", 1)
        path = base.path + ("chat/" + tail[1] if len(tail) == 2 else url.path.lstrip("/"))
        url = base.copy_with(path=path, query=url.query or None)
    content = request.content
    if state["model"] and content:
        try:
            body = json.loads(content)
            body["model"] = state["model"]
            content = json.dumps(body).encode()
        except ValueError:
            pass
    headers = [(k, v) for k, v in request.headers.raw
               if k.lower() not in (b"host", b"content-length")]
    headers.append((b"x-hud-ray-policy-version", str(state["version"]).encode()))
    return httpx.Request(request.method, url, headers=headers, content=content,
                         extensions=request.extensions)


def _stamped(result: tuple[Any, bytes], version: int, request: Any) -> Any:
    """The response with the version that served it in its JSON body."""
    import httpx

    response, body = result
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            data[VERSION_FIELD] = version
            body = json.dumps(data).encode()
    except ValueError:
        pass
    headers = [(k, v) for k, v in response.headers.raw
               if k.lower() not in (b"content-encoding", b"content-length",
                                    b"transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, content=body,
                          request=request, extensions=response.extensions)


def policy_http_client(session: Any) -> Any:
    """For agents of one's own: an httpx.AsyncClient whose calls follow the rollout
    source's policy (pass it to the model client, e.g. `AsyncOpenAI(http_client=...)`)."""
    import httpx

    name = ((session.task.columns or {}).get("rl") or {}).get("policy")
    if not name:
        raise RuntimeError("this rollout was not started by a rollout source with a policy")
    return httpx.AsyncClient(transport=policy_transport(name), timeout=None)
