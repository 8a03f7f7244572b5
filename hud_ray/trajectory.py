"""A rollout's trajectory as typed data: one row per step (`runs/<id>/steps/`) and the
per-rollout summary columns (`n_turns`, `prompt_tokens`, `cost_usd`, ...).

Steps arrive in the session's recorder in three shapes, all normalised here:
- hud agents (through the adapter): `{"kind": "hud", "step": <hud Step JSON>}` — an
  `AgentStep` (source "agent": a model call, with `usage`, `model`, `sample` token ids),
  a `ToolStep` (source "tool": `call` + `result`), task/user/system steps;
- the built-in OpenAI-compatible agent and native agents through `session.record_llm` /
  `session.record_tool`: `{"kind": "llm", ...}` / `{"kind": "tool", ...}`;
- anything else a native agent records with `session.record_step(kind, **data)`: its kind
  and its data as JSON (`extra`).

What every step has is a typed column; what varies by step (tool arguments and results,
free-form data) stays JSON. Raw provider responses are dropped unless asked for
(`keep_raw`): they were 44 % of a run's bytes and nobody queries them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from hud_ray.prices import cost_usd

LLM, TOOL = "llm", "tool"


def step_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("run_id", pa.string()), ("rollout_key", pa.string()), ("index", pa.int32()),
        ("kind", pa.string()), ("t", pa.float64()), ("latency_s", pa.float64()),
        ("model", pa.string()), ("content", pa.string()), ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
        ("cached_tokens", pa.int64()), ("cost_usd", pa.float64()),
        ("tool_name", pa.string()), ("tool_call_id", pa.string()), ("tool_args", pa.string()),
        ("tool_result", pa.string()), ("is_error", pa.bool_()), ("error", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),
        ("extra", pa.string()), ("raw", pa.string()),
    ], metadata={"hud_ray.steps_schema_version": "1"})


SUMMARY_FIELDS = ("n_turns", "n_tool_calls", "n_tool_errors", "prompt_tokens",
                  "completion_tokens", "model", "stop_reason", "llm_s", "llm_wait_s", "cost_usd")


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _seconds(step: dict[str, Any]) -> float | None:
    start, end = step.get("started_at"), step.get("ended_at")
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end.replace("Z", "+00:00"))
                - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return None


def _result_text(result: Any) -> str | None:
    """An MCP tool result as the text a model saw (JSON when it has no text blocks)."""
    if not isinstance(result, dict):
        return _json(result)
    blocks = result.get("content") or []
    texts = [b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
    return "\n".join(texts) if texts else _json(result)


def _from_hud(index: int, step: dict[str, Any], keep_raw: bool) -> dict[str, Any]:
    source = step.get("source")
    row: dict[str, Any] = {"index": index, "kind": source, "latency_s": _seconds(step),
                           "error": step.get("error")}
    if source == "agent":
        usage = step.get("usage") or {}
        sample = step.get("sample") or {}
        row.update(kind=LLM, model=step.get("model"), content=step.get("content"),
                   finish_reason=step.get("finish_reason") or step.get("stop_reason"),
                   prompt_tokens=usage.get("prompt_tokens"),
                   completion_tokens=usage.get("completion_tokens"),
                   cached_tokens=usage.get("cached_tokens"), cost_usd=usage.get("cost_usd"),
                   prompt_token_ids=sample.get("prompt_token_ids"),
                   completion_token_ids=sample.get("output_token_ids"),
                   logprobs=sample.get("output_logprobs"),
                   extra=_json({"tool_calls": step["tool_calls"]} if step.get("tool_calls")
                               else None),
                   raw=_json(step.get("raw")) if keep_raw else None)
    elif source == "tool":
        call, result = step.get("call") or {}, step.get("result") or {}
        row.update(kind=TOOL, tool_name=call.get("name"), tool_call_id=call.get("id"),
                   tool_args=_json(call.get("arguments")), tool_result=_result_text(result),
                   is_error=bool(result.get("isError")) or bool(step.get("error")))
    else:
        rest = {k: v for k, v in step.items()
                if k not in ("source", "started_at", "ended_at", "error", "step_id")}
        row["extra"] = _json(rest or None)
    return row


def _from_native(index: int, step: dict[str, Any], keep_raw: bool) -> dict[str, Any]:
    kind = step.get("kind")
    known = {"kind", "t", "latency_s", "error"}
    row: dict[str, Any] = {"index": index, "kind": kind, "t": step.get("t"),
                           "latency_s": step.get("latency_s"), "error": step.get("error")}
    if kind == LLM:
        fields = ("model", "content", "finish_reason", "prompt_tokens", "completion_tokens",
                  "cached_tokens", "cost_usd", "prompt_token_ids", "completion_token_ids",
                  "logprobs")
        row.update({f: step.get(f) for f in fields})
        row["raw"] = _json(step.get("raw")) if keep_raw else None
        known.update(fields, {"raw"})
    elif kind == TOOL:
        row.update(tool_name=step.get("name"), tool_call_id=step.get("call_id"),
                   tool_args=_json(step.get("args")), tool_result=_json(step.get("result")),
                   is_error=bool(step.get("is_error") or step.get("error")))
        known.update({"name", "call_id", "args", "result", "is_error"})
    rest = {k: v for k, v in step.items() if k not in known}
    if rest:
        row["extra"] = _json(rest)
    return row


def step_rows(steps: list[dict[str, Any]], *, keep_raw: bool = False) -> list[dict[str, Any]]:
    """The typed rows of a session's recorded steps, in order (run_id/rollout_key unset)."""
    rows = []
    for index, step in enumerate(steps):
        if step.get("kind") == "hud" and isinstance(step.get("step"), dict):
            row = _from_hud(index, step["step"], keep_raw)
            row["t"] = step.get("t")
        else:
            row = _from_native(index, step, keep_raw)
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]], *, prices: dict[str, Any] | None = None,
            llm_wait_s: float | None = None) -> dict[str, Any]:
    """The rollout's trajectory columns from its typed step rows."""
    llm = [r for r in rows if r.get("kind") == LLM]
    tools = [r for r in rows if r.get("kind") == TOOL]
    models = [r["model"] for r in llm if r.get("model")]
    model = max(set(models), key=models.count) if models else None

    def total(field: str) -> int | None:
        values = [r[field] for r in llm if r.get(field) is not None]
        return sum(values) if values else None

    costs = []
    for r in llm:
        cost = r.get("cost_usd")
        if cost is None:
            cost = cost_usd(r.get("model"), r.get("prompt_tokens"), r.get("completion_tokens"),
                            prices)
            r["cost_usd"] = cost
        costs.append(cost)
    latencies = [r["latency_s"] for r in llm if r.get("latency_s") is not None]
    return {
        "n_turns": len(llm),
        "n_tool_calls": len(tools),
        "n_tool_errors": sum(1 for r in tools if r.get("is_error")),
        "prompt_tokens": total("prompt_tokens"),
        "completion_tokens": total("completion_tokens"),
        "model": model,
        "stop_reason": llm[-1].get("finish_reason") if llm else None,
        "llm_s": sum(latencies) if latencies else None,
        "llm_wait_s": llm_wait_s,
        # NULL when any call's model has no price: a partial sum would understate it.
        "cost_usd": sum(costs) if costs and all(c is not None for c in costs) else None,
    }
