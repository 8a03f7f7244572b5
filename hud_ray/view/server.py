"""`hud-ray view`: a Starlette app over the runs' Parquet, served by uvicorn.

Every answer is computed from the run directories on each request (through the part cache
in runs.py), so a run still being written shows its new rows on the next poll; the page
polls `/api/runs` and refreshes what changed. Nothing is written into a run.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hud_ray.results import RunDirError
from hud_ray.runlock import LOCK_FILE
from hud_ray.view import analysis, queries
from hud_ray.view.queries import json_safe
from hud_ray.view.runs import (
    STEP_VIEW_COLUMNS,
    RunData,
    RunGone,
    RunStore,
    all_steps,
    read_steps_of,
    run_summary,
)
from hud_ray.view.security import LoopbackHostMiddleware, TokenMiddleware, is_loopback
from hud_ray.view.sqlbox import SqlRejected, run_sql

STATIC = Path(__file__).parent / "static"
class Viewer:
    """The app's state: the run store and the per-version caches of the heavy answers
    (two requests for the same answer compute it once: the second waits for the first)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], tuple[str, Any]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def cached(self, run: RunData, what: str, compute: Any, salt: str = "") -> Any:
        with self._guard:
            lock = self._locks.setdefault((run.run_id, what), threading.Lock())
        with lock:
            table, version = run.table()
            version += salt
            hit = self._cache.get((run.run_id, what))
            if hit is None or hit[0] != version:
                hit = self._cache[(run.run_id, what)] = (version, compute(table))
            return hit[1]

    def summary(self, run: RunData) -> dict[str, Any]:
        """A runs-list line, recomputed when the parts or the manifest change."""
        stamp = []
        for name in ("manifest.json", LOCK_FILE):  # the state reads both
            try:
                stamp.append((run.path / name).stat().st_mtime_ns)
            except OSError:
                stamp.append(None)
        try:
            line = self.cached(run, "summary", lambda _table: run_summary(run),
                               salt=f":{stamp}")
            # A writer can die without touching a file: its state is looked at each time.
            return {**line, "state": run.state(run.manifest())}
        except (RunGone, RunDirError, OSError):
            return run_summary(run)  # says what is wrong with this run, in its line

    def warm_up(self) -> None:
        """Read every run and compute its overview before anyone asks (in a thread at
        start): the first page a user opens is then served from the cache."""
        for run in self.store.scan():
            try:
                self.summary(run)
                self.cached(run, "overview", queries.overview)
            except (RunGone, RunDirError, OSError):
                continue

    def side(self, request: Request, prefix: str) -> list[dict[str, Any]]:
        """One side of a comparison: a run (`a`), narrowed to a variant (`a_variant`)."""
        run_id = request.query_params.get(prefix)
        if not run_id:
            raise ValueError(f"compare needs ?{prefix}=RUN_ID")
        table, _ = self.store.get(run_id).table()
        rows = table.select(["slug", "status", "reward", "variant", "rollout_key"]).to_pylist()
        variant = request.query_params.get(f"{prefix}_variant")
        if variant:
            rows = [r for r in rows if (r["variant"] or "") == variant]
            if not rows:
                raise ValueError(f"run {run_id} has no rollouts of variant {variant!r}")
        return rows


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(json_safe(data), default=str), status_code=status,
                    media_type="application/json")


def api(handler: Any) -> Any:
    """One clear JSON error per bad input or vanished run; the page shows it and goes on."""
    async def endpoint(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        try:
            if request.method == "POST":
                request.state.body = await request.json()
            result = await run_in_threadpool(handler, request)
        except (RunGone, RunDirError, FileNotFoundError) as exc:
            return _json({"error": str(exc)}, 404)
        except (SqlRejected, ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, 400)
        return result if isinstance(result, Response) else _json(result)
    return endpoint


def build_app(store: RunStore, token: str | None = None, loopback: bool = True) -> Starlette:
    viewer = Viewer(store)

    def runs(request: Request) -> Any:
        found = store.scan()
        return {"roots": [str(r) for r in store.roots],
                "runs": [viewer.summary(r) for r in found]}

    def run_of(request: Request) -> RunData:
        return store.get(request.path_params["run_id"])

    def overview(request: Request) -> Any:
        run = run_of(request)
        return {"run": viewer.summary(run), **viewer.cached(run, "overview", queries.overview)}

    def filters(request: Request, run: RunData) -> dict[str, str]:
        """The URL's filters; a triage cluster (`cluster=status|error_type|signature`)
        becomes the keys of its rollouts."""
        params = dict(request.query_params)
        if cluster := params.pop("cluster", None):
            found = [c for c in viewer.cached(run, "triage", analysis.triage)["clusters"]
                     if f"{c['status']}|{c['error_type']}|{c['signature']}" == cluster]
            params["keys"] = ",".join(found[0]["keys"]) if found else "\x00none"
        return params

    def rollouts(request: Request) -> Any:
        run = run_of(request)
        table, _ = run.table()
        return queries.rollouts_page(table, filters(request, run))

    def facets(request: Request) -> Any:
        run = run_of(request)
        return {"columns": queries.columns(), **viewer.cached(run, "facets", queries.facets)}

    def one(request: Request) -> Any:
        table, _ = run_of(request).table()
        row = queries.rollout(table, request.path_params["key"])
        if row is None:
            raise RunGone(f"no rollout {request.path_params['key']!r} in this run")
        return row

    def steps(request: Request) -> Any:
        table = read_steps_of(run_of(request), [request.path_params["key"]], STEP_VIEW_COLUMNS)
        return {"steps": queries._json_rows(table)}

    def triage(request: Request) -> Any:
        return viewer.cached(run_of(request), "triage", analysis.triage)

    def dist(request: Request) -> Any:
        return viewer.cached(run_of(request), "dist", queries.histograms)

    def compare(request: Request) -> Any:
        return analysis.compare(viewer.side(request, "a"), viewer.side(request, "b"))

    def sql(request: Request) -> Any:
        body = request.state.body if isinstance(request.state.body, dict) else {}
        run = run_of(request)
        table, _ = run.table()
        steps = viewer.cached(run, "steps", lambda _table: all_steps(run))  # read once
        return run_sql(str(body.get("sql", "")), table, steps, body.get("limit") or 1000)

    def export(request: Request) -> Response:
        from hud_ray.view.export import export_bytes

        run = run_of(request)
        table, _ = run.table()
        return export_bytes(run, table, filters(request, run))

    routes = [
        Route("/", lambda request: FileResponse(STATIC / "index.html")),
        Route("/api/runs", api(runs)),
        Route("/api/runs/{run_id}/overview", api(overview)),
        Route("/api/runs/{run_id}/facets", api(facets)),
        Route("/api/runs/{run_id}/rollouts", api(rollouts)),
        Route("/api/runs/{run_id}/rollout/{key:path}", api(one)),
        Route("/api/runs/{run_id}/steps/{key:path}", api(steps)),
        Route("/api/runs/{run_id}/triage", api(triage)),
        Route("/api/runs/{run_id}/dist", api(dist)),
        Route("/api/runs/{run_id}/sql", api(sql), methods=["POST"]),
        Route("/api/runs/{run_id}/export", api(export)),
        Route("/api/compare", api(compare)),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    middleware = [Middleware(TokenMiddleware, token=token)] if token else []
    if loopback:
        middleware.append(Middleware(LoopbackHostMiddleware))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.viewer = viewer
    return app


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one clear error (a port in use, a host that is not ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == 98:
            raise RunDirError(f"port {port} on {host} is in use; pass --port N (0 picks a "
                              "free one)") from None
        raise RunDirError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(paths: list[str], host: str = "127.0.0.1", port: int = 8765) -> int:
    """Serve until interrupted; prints the URL (with the token when off loopback)."""
    import uvicorn

    from hud_ray.view.runs import check_roots
    from hud_ray.view.security import new_token

    store = RunStore(check_roots(paths))
    if not store.scan():
        print(f"hud-ray view: no run under {', '.join(paths)} yet (a directory with a "
              "manifest.json); the page lists runs as they appear", file=sys.stderr)
    loopback = is_loopback(host)
    token = None if loopback else new_token()
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    print(f"hud-ray view: serving {len(store.scan())} run(s) at "
          + (url if token is None else f"{url}?token={token}"), flush=True)
    app = build_app(store, token, loopback)
    threading.Thread(target=app.state.viewer.warm_up, name="view-warm-up", daemon=True).start()
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
