"""hud_ray as an RL trainer's rollout engine: a long-lived source of rollout groups.

`RolloutSource` (source.py) takes group requests and hands out complete groups, exactly
once, under a failure rule (rules.py) and a staleness bound (staleness.py), with a
durable group log in the run directory (group_log.py); the trainer's policy version and
pause/resume reach agents' model calls through policy.py; tokens.py turns a member's
turns into trainable sequences; adapters/ map groups onto trainers' own types. The
scheduler it drives is the ordinary one, fed live (live.py). Names resolve lazily, so an
adapter's trainer venv needs neither Ray nor pyarrow.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Group": "hud_ray.rl.groups", "GroupRequest": "hud_ray.rl.groups",
    "Member": "hud_ray.rl.groups", "GroupRule": "hud_ray.rl.rules",
    "RolloutSource": "hud_ray.rl.source", "SourceClosedError": "hud_ray.rl.source",
    "SourceFullError": "hud_ray.rl.source", "SourceStarvedError": "hud_ray.rl.source",
    "StalenessPolicy": "hud_ray.rl.staleness",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hud_ray.rl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
