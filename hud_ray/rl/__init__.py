"""hud_ray as an RL trainer's rollout engine: a long-lived source of rollout groups.

`RolloutSource` (source.py) takes group requests and hands out complete groups, exactly
once, under a failure rule (rules.py) and a staleness bound (staleness.py), with a
durable group log in the run directory (group_log.py). The scheduler it drives is the
ordinary one, fed live (live.py).
"""

from hud_ray.rl.groups import Group, GroupRequest, Member
from hud_ray.rl.rules import GroupRule
from hud_ray.rl.source import RolloutSource, SourceClosedError, SourceFullError
from hud_ray.rl.staleness import StalenessPolicy

__all__ = ["Group", "GroupRequest", "GroupRule", "Member", "RolloutSource",
           "SourceClosedError", "SourceFullError", "StalenessPolicy"]
