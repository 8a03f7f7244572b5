"""Adapters from hud_ray's groups onto RL trainers' own types. Each imports its trainer
lazily; none is needed by hud_ray itself."""
