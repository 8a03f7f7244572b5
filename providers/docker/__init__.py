"""`docker`: one container per rollout on a Docker daemon (the local one by default).

    hud-ray image build examples/demo --tag hudray-demo:t
    hud-ray run tasks.jsonl --agent rule --provider docker --provider-opt image=hudray-demo:t

Client: **aiodocker** (the `[docker]` extra), not docker-py. Every provider call already
runs on the worker's event loop, hundreds of rollouts at once; aiodocker speaks the Engine
API natively on that loop over one pooled aiohttp session, where docker-py would need a
thread per in-flight blocking call (`asyncio.to_thread`, a 32-thread default pool shared
with everything else) and its own urllib3 pool per thread. aiohttp is already in the
dependency tree (Ray's dashboard, the cloud SDKs). Plan-time checks, which are synchronous,
use a few stdlib HTTP requests instead (daemon.py).

Networking (option `network`, default `auto`): where the daemon has a bridge network the
server listens inside the container and its port is published on 127.0.0.1 only; where it
has none (`dockerd --bridge=none`, as on these machines, where `-p` is silently ignored)
the container shares the host's network and its server binds 127.0.0.1 on a port of its
own — by default one it picks itself and prints as HUD_SERVE_PORT=, so no two containers
can clash.

Package layout: options.py (options, spec → container config), daemon.py (blocking stdlib
client: plan-time checks, builds), images.py (image refs and directories → tags), client.py
(aiodocker per loop, error policy), owners.py (who owns a container, dead-owner sweep),
wheelhouse.py (offline wheels for images that pip-install hud), provider.py (lifecycle).
Importing it does not import aiodocker.

An image may name its own server command in the label `hud-ray.command` (a hud env image:
hud's server); the `command` option wins, and without either envkit serves env.py.
"""

from .options import DockerOptions
from .provider import DockerProvider

__all__ = ["DockerOptions", "DockerProvider"]
