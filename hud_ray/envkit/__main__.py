"""`python -m hud_ray.envkit ENV_FILE [--env NAME] [--host H] [--port P]`"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

from .loader import EnvLoadError, load_environment
from .server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hud_ray.envkit", description=__doc__)
    parser.add_argument("path", help="env file (or a directory holding env.py)")
    parser.add_argument("--env", default=None, help="environment name when several are defined")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    args = parser.parse_args(argv)
    try:
        env = load_environment(args.path, args.env)
    except EnvLoadError as exc:
        print(f"envkit: cannot load {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"envkit: cannot load {args.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve_until_signal(env, args.host, args.port))


def zygote_prepare(path: str, name: str | None, host: str) -> Callable[[], int]:
    """For the local provider's fork server (providers/zygote.py, told this name as data):
    load the env once there; each forked child calls the result to serve it as `main`
    does (SIGTERM/SIGINT end serving, exit code 0). A load error propagates: the fork
    server reports it as the env's own start failure."""
    env = load_environment(path, name)
    return lambda: asyncio.run(_serve_until_signal(env, host, 0))


async def _serve_until_signal(env, host: str, port: int) -> int:
    task = asyncio.create_task(serve(env, host, port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        return 0
    except OSError as exc:
        print(f"envkit: cannot serve on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
