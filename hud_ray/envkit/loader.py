"""Load an Environment from a file path (the `python -m hud_ray.envkit PATH` argument)."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from .env import Environment


class EnvLoadError(Exception):
    """An env file that cannot be served; the message names the file (and line)."""


def load_environment(path: str, name: str | None = None) -> Environment:
    file = Path(path)
    if file.is_dir():
        file = file / "env.py"
    if not file.is_file():
        raise EnvLoadError(f"{file}: env file not found")
    file = file.resolve()
    module_name = f"_hud_ray_env_{abs(hash(str(file)))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise EnvLoadError(f"{file}: cannot import env file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise EnvLoadError(f"{exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}") from exc
    except Exception as exc:
        raise EnvLoadError(f"{_where(exc, file)}: {type(exc).__name__}: {exc}") from exc
    envs = [v for v in vars(module).values() if isinstance(v, Environment)]
    if name is not None:
        envs = [e for e in envs if e.name == name]
    if len(envs) != 1:
        found = ", ".join(repr(e.name) for e in envs) or "none"
        wanted = f" named {name!r}" if name else ""
        raise EnvLoadError(f"{file}: expected one envkit Environment{wanted}, found {found}")
    return envs[0]


def _where(exc: BaseException, file: Path) -> str:
    """`file:line` of the deepest traceback frame inside the env file itself."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
    return f"{file}:{lines[-1]}" if lines else str(file)
