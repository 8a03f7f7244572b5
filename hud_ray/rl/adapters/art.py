"""OpenPipe ART: a hud_ray group as an `art.TrajectoryGroup`, ready for ART's trainers
(`model.train(groups)`, `PipelineTrainer`).

    from hud_ray.rl.adapters.art import to_trajectory_group
    groups = [to_trajectory_group(source.next_group()) for _ in range(B)]
    await model.train(groups)

Each member becomes an `art.Trajectory`: the conversation as ART expects it
(`messages_and_choices`: the prompt, then each model call's assistant message and each
tool result), its reward (0 for a member zeroed by the failure rule), the policy versions
it started and ended at (`initial_policy_version` / `final_policy_version`, which ART's
`max_steps_off_policy` reads), and hud_ray's facts as metrics and metadata. Members the
rule left out are the group's `exceptions`, as ART keeps failed rollouts aside.
Needs `openpipe-art` (Python >= 3.12); hud_ray's own runtime does not.
"""

from __future__ import annotations

import json
from typing import Any

from hud_ray.rl.groups import Group, Member


def to_trajectory_group(group: Group) -> Any:
    import art

    trajectories = [to_trajectory(group, member) for member in group.members]
    exceptions = [art.trajectories.PydanticException(
        type="DroppedMember", message=f"{key}: left out by the group's failure rule",
        traceback="") for key in group.dropped]
    return art.TrajectoryGroup(
        trajectories, exceptions=exceptions,
        metadata={"group_id": group.group_id, "hud_ray_reemitted": group.reemitted})


def to_trajectory(group: Group, member: Member) -> Any:
    import art

    row = member.row or {}
    metrics: dict[str, float | int | bool] = {"zeroed": member.zeroed,
                                               "attempts": member.attempts}
    for key in ("total_s", "sandbox_seconds", "n_turns", "n_tool_calls"):
        if row.get(key) is not None:
            metrics[key] = row[key]
    return art.Trajectory(
        messages_and_choices=messages(row), reward=float(member.reward or 0.0),
        initial_policy_version=member.version_start,
        final_policy_version=member.version_end, metrics=metrics,
        metadata={"rollout_key": member.rollout_key, "group_id": group.group_id,
                  "status": member.status, "sandbox_id": row.get("sandbox_id")})


def messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation of a rollout row: prompt, assistant turns, tool results."""
    prompt = row.get("prompt")
    out: list[dict[str, Any]] = [{"role": "user", "content": prompt or ""}]
    steps = row.get("steps")
    steps = json.loads(steps) if isinstance(steps, str) else (steps or [])
    for i, step in enumerate(steps):
        if step.get("kind") == "llm":
            message: dict[str, Any] = {"role": "assistant", "content": step.get("content")}
            calls = step.get("tool_calls") or []
            if calls:
                message["tool_calls"] = [
                    {"id": f"call_{i}_{j}", "type": "function",
                     "function": {"name": c["name"], "arguments": c.get("arguments") or "{}"}}
                    for j, c in enumerate(calls)]
            out.append(message)
        elif step.get("kind") == "tool":
            result = step.get("result")
            out.append({"role": "tool", "tool_call_id": step.get("call_id") or f"tool_{i}",
                        "content": result if isinstance(result, str) else json.dumps(result)})
    if len(out) == 1 and row.get("answer") is not None:  # an agent that records no turns
        out.append({"role": "assistant", "content": row["answer"]})
    return out
