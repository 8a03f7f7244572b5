"""Prime Intellect's verifiers (v1): a hud_ray group as verifiers `Episode`s — the
artifact prime-rl's orchestrator consumes from an env server — one per member, sharing
the group's `GroupInfo`.

    from hud_ray.rl.adapters.verifiers import to_episodes
    episodes = to_episodes(group, run_id=source.run_dir.name)

What maps: the group (`episode.group.id`), the member's policy span (`run.work.policy`:
the versions it started and ended at; `work.step` = its start), its outcome (`ok`,
`is_timeout`, `errors` with hud_ray's status as the error type), the task (`TraceTask`
with hud's slug as key and the prompt), and one trace whose reward is the member's
(`rewards["reward"]`, 0 for a member zeroed by the failure rule). Not mapped yet: the
trace's message graph (`nodes`, `calls`): a trainer reading token ids from verifiers
traces gets them from `Member.tokens()` instead. Needs `verifiers` (Python >= 3.12).
"""

from __future__ import annotations

from typing import Any

from hud_ray.rl.groups import Group, Member


def to_episodes(group: Group, run_id: str) -> list[Any]:
    return [to_episode(group, member, run_id) for member in group.members]


def to_episode(group: Group, member: Member, run_id: str) -> Any:
    from verifiers.v1.configs.agent import AgentConfig
    from verifiers.v1.episode import (
        EnvInfo,
        Episode,
        GroupInfo,
        PolicySpan,
        TrainRunInfo,
        TrainWorkInfo,
    )
    from verifiers.v1.task import TaskData
    from verifiers.v1.trace import AgentInfo, Error, Reward, Trace, TraceTask

    task = group.request.task
    row = member.row or {}
    trace_task = TraceTask(type="HudTask", key=member.rollout_key,
                           data=TaskData(id=task.slug, name=task.id,
                                         prompt=row.get("prompt")))
    ok = member.status == "ok"
    errors = ([] if ok or not member.error
              else [Error(type=member.status, message=member.error)])
    start = member.version_start if member.version_start is not None else 0
    end = member.version_end if member.version_end is not None else start
    trace = Trace(task=trace_task, agent=AgentInfo(config=AgentConfig(), name="agent"),
                  rewards={"reward": Reward(score=float(member.reward or 0.0))},
                  metrics={"zeroed": float(member.zeroed), "attempts": float(member.attempts)},
                  info={"rollout_key": member.rollout_key, "sandbox_id": row.get("sandbox_id")},
                  is_completed=member.status in ("ok", "agent_error", "timeout"), ok=ok,
                  is_timeout=member.status == "timeout", errors=errors,
                  stop_condition=member.status)
    return Episode(
        env=EnvInfo(id=f"hud:{task.env_name}", name=task.env_name), task=trace_task,
        group=GroupInfo(id=group.group_id),
        run=TrainRunInfo(id=run_id, work=TrainWorkInfo(
            step=start, policy=PolicySpan(start=start, end=max(start, end)))),
        ok=ok, is_timeout=member.status == "timeout", errors=errors, traces=[trace])
