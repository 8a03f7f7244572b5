"""`hud-ray image build DIR [--tag T] [--build-arg K=V]`: an env's image on the local daemon.

Builds `DIR/Dockerfile.hud` (hud's scaffold name), else `DIR/Dockerfile`, with the classic
builder (no BuildKit) from DIR plus `.hud-ray/` (hud_ray's stdlib env server; see
providers/imagedir.py). The same DIR is accepted as `--provider-opt image=DIR` by the
docker, modal and daytona providers, so one definition runs everywhere. A DIR that
installs Python packages (a hud env) gets its offline wheelhouse filled first
(providers/docker/wheelhouse.py).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.parse
from collections.abc import Callable

from providers import imagedir
from providers.docker import images
from providers.docker.daemon import Daemon
from providers.docker.options import default_docker_host


def build_image(directory: str, tag: str | None = None,
                build_args: dict[str, str] | None = None,
                docker_host: str | None = None,
                on_line: Callable[[str], None] | None = None) -> str:
    """Build DIR's image on the daemon; return its tag (default: a content-hash tag)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image directory {directory!r} not found")
    imagedir.dockerfile(directory)
    args = dict(build_args or {})
    say = on_line or (lambda line: print(line, file=sys.stderr, flush=True))
    daemon = Daemon(docker_host or default_docker_host())
    daemon.ping()
    started = time.monotonic()
    images.prepare(daemon, directory, args, say)  # the wheelhouse is part of the content
    tag = tag or imagedir.default_tag(directory, args)
    images.build(daemon, directory, tag, args, say)
    size_mb = daemon.json(f"/images/{urllib.parse.quote(tag, safe='')}/json")["Size"] / 1e6
    say(f"built {tag}: {size_mb:.0f} MB in {time.monotonic() - started:.1f}s")
    return tag
