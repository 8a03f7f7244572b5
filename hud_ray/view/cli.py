"""`hud-ray view`: serve the viewer, or write its static bundle (`--export DIR`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hud_ray.results import RunDirError


def cmd_view(args: argparse.Namespace) -> int:
    try:
        import duckdb  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RunDirError(f"hud-ray view needs the [view] extra ({exc.name} is missing): "
                          "pip install 'hud-ray[view]'") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0..65535")
    if args.export:
        from hud_ray.view.export import static_bundle
        from hud_ray.view.runs import RunStore, check_roots

        runs = RunStore(check_roots(args.paths)).scan()
        if not runs:
            raise RunDirError(f"no run under {', '.join(args.paths)} (a directory with a "
                              "manifest.json): nothing to export")
        index = static_bundle(runs, Path(args.export))
        print(f"hud-ray view: {len(runs)} run(s) exported; open {index.resolve().as_uri()}")
        return 0
    from hud_ray.view.server import serve

    return serve(args.paths, host=args.host, port=args.port)
