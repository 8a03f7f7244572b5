"""hud_ray: distributed rollouts of HUD envs on Ray, results streamed to Parquet.

Kept import-light on purpose: `python -m hud_ray.envkit` runs inside sandboxes and must
not pay for Ray or pyarrow. Public names resolve lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run_distributed": "hud_ray.api",
    "stream_distributed": "hud_ray.api",
    "read_results": "hud_ray.results",
    "read_steps": "hud_ray.results",
    "attach": "hud_ray.api",
    "Task": "hud_ray.tasks",
    "load_tasks": "hud_ray.tasks",
    "run_rollout": "hud_ray.rollout",
    "shutdown": "hud_ray.pool",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hud_ray' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
