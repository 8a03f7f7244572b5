"""Load an Environment from a file path (the `python -m hud_ray.envkit PATH` argument)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .env import Environment


def load_environment(path: str, name: str | None = None) -> Environment:
    file = Path(path)
    if file.is_dir():
        file = file / "env.py"
    if not file.is_file():
        raise FileNotFoundError(f"env file not found: {path}")
    module_name = f"_hud_ray_env_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import env file {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(file.parent))
    spec.loader.exec_module(module)
    envs = [v for v in vars(module).values() if isinstance(v, Environment)]
    if name is not None:
        envs = [e for e in envs if e.name == name]
    if len(envs) != 1:
        found = ", ".join(repr(e.name) for e in envs) or "none"
        wanted = f" named {name!r}" if name else ""
        raise LookupError(f"{file}: expected one envkit Environment{wanted}, found {found}")
    return envs[0]
