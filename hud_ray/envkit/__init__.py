"""envkit: a stdlib-only server of HUD's env wire protocol.

Run an env file with `python -m hud_ray.envkit path/to/env.py --port 0`; it prints
`HUD_SERVE_PORT=<port>` once it serves. Nothing here imports beyond the standard
library, so envkit runs inside any sandbox image that has Python.
"""

from .env import Capability, Environment, Template
from .loader import EnvLoadError, load_environment
from .server import bind, serve

__all__ = [
    "Capability", "EnvLoadError", "Environment", "Template", "bind", "load_environment", "serve",
]
