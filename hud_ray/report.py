"""`hud-ray report RUN_DIR`: counts by status, reward and pass@k by template, model and tool
usage (calls, tokens, cost, tool errors) by template and variant, phase latency.

Pure pyarrow + stdlib, so a report needs nothing beyond the core install.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from hud_ray.results import duplicate_rows, read_manifest, read_results
from hud_ray.schema import PHASES


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        k = n
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_MIN_N = 10  # below this a percentile bootstrap under-covers badly: no interval


def wilson(mean: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion `mean` of `n` trials. Also a valid (wider than
    needed) interval for the mean of values in [0, 1]: their variance is at most m(1-m)."""
    denom = 1 + z * z / n
    centre = (mean + z * z / (2 * n)) / denom
    half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values: list[float], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded: a report reads the same twice)."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def interval(values: list[float]) -> tuple[tuple[float, float] | None, str]:
    """An honest 95% interval of the mean of `values`, and how it was made: Wilson for 0/1
    rewards, Wilson's bound for rewards in [0, 1] (never narrower than the truth allows),
    a bootstrap for anything else once n >= 10 — and none rather than a false ±0."""
    n = len(values)
    if n == 0:
        return None, "-"
    mean = sum(values) / n
    if all(v in (0.0, 1.0) for v in values):
        return wilson(mean, n), "wilson"
    if all(0.0 <= v <= 1.0 for v in values):
        return wilson(mean, n), "wilson-bound"
    if n >= BOOTSTRAP_MIN_N:
        return bootstrap_mean(values), "bootstrap"
    return None, f"n<{BOOTSTRAP_MIN_N}"


def build_report(table: pa.Table, success_threshold: float = 1.0) -> dict[str, Any]:
    rows = table.to_pylist()
    status_counts: dict[str, int] = defaultdict(int)
    by_variant_template: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        status_counts[row["status"]] += 1
        by_variant_template[(row.get("variant") or "", row["template_id"])].append(row)
    templates = []
    for (variant, template), group in sorted(by_variant_template.items()):
        templates.append(_template_stats(variant, template, group, success_threshold))
    phases = {
        phase: {"p50": percentile(vals, 0.5), "p95": percentile(vals, 0.95)}
        for phase in (*PHASES, "total")
        if (vals := [r[f"{phase}_s"] for r in rows if r.get(f"{phase}_s") is not None])
    }
    failures: dict[str, int] = defaultdict(int)
    for row in rows:
        if row["status"] != "ok":
            failures[f"{row['status']}:{row.get('error_type') or '-'}"] += 1
    variants = sorted({row.get("variant") or "" for row in rows})
    compare = [_variant_stats(v, [r for r in rows if (r.get("variant") or "") == v],
                              success_threshold) for v in variants] if len(variants) > 1 else []
    overall = _template_stats("", "(all)", rows, success_threshold) if rows else None
    return {"rows": len(rows), "status": dict(status_counts), "templates": templates,
            "overall": overall, "phases": phases, "failures": dict(failures),
            "variants": compare}


def _variant_stats(variant: str, rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """One variant's headline numbers, for the side-by-side comparison."""
    overall = _template_stats(variant, "*", rows, threshold)
    totals = [r["total_s"] for r in rows if r.get("total_s") is not None]
    failed: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["status"] != "ok":
            failed[r["status"]] += 1
    return {**overall, "failures": dict(failed),
            "total_p50": percentile(totals, 0.5), "total_p95": percentile(totals, 0.95)}


def _template_stats(variant: str, template: str, group: list[dict[str, Any]],
                    threshold: float) -> dict[str, Any]:
    """One population, every number over the same rollouts: a failed rollout (anything
    but `ok`) counts as reward 0 in `mean_reward`, its interval and pass@k; the mean over
    graded rollouts only is beside it, never mixed in."""
    graded = [r["reward"] for r in group if r["status"] == "ok" and r["reward"] is not None]
    scored = [r["reward"] if r["status"] == "ok" and r["reward"] is not None else 0.0
              for r in group]
    by_task: dict[str, list[float]] = defaultdict(list)
    for r, reward in zip(group, scored, strict=True):
        by_task[r["group_id"]].append(reward)
    k = max(len(v) for v in by_task.values())
    passes = {
        f"pass@{kk}": sum(pass_at_k(len(v), sum(x >= threshold for x in v), kk)
                          for v in by_task.values()) / len(by_task)
        for kk in sorted({1, k})
    }
    ci, method = interval(scored)
    return {"variant": variant, "template": template, "rollouts": len(group),
            "graded": len(graded), "failed": len(group) - len(graded),
            "mean_reward": sum(scored) / len(scored) if scored else None,
            "ci95": list(ci) if ci else None, "ci_method": method,
            "graded_mean_reward": sum(graded) / len(graded) if graded else None, **passes,
            "usage": _usage(group)}


def _usage(group: list[dict[str, Any]]) -> dict[str, Any]:
    """What the population's agents spent: model calls, tokens, cost, tool calls/errors.
    Cost is NULL when any model call's model has no price (a partial sum understates)."""
    def total(key: str) -> int:
        return sum(r.get(key) or 0 for r in group)

    tokens = total("prompt_tokens") + total("completion_tokens")
    costs = [r.get("cost_usd") for r in group if (r.get("n_turns") or 0) > 0]
    return {"model_calls": total("n_turns"), "tokens": tokens,
            "tokens_per_rollout": tokens / len(group) if group else None,
            "cost_usd": sum(costs) if costs and all(c is not None for c in costs) else None,
            "tool_calls": total("n_tool_calls"), "tool_errors": total("n_tool_errors")}


# Every line is one population (the rollouts of that template or variant): n, how many
# were graded and failed, the mean with failures as 0 and its interval, the graded-only
# mean beside it, pass@k.
STATS_HEADER = ["n", "graded", "failed", "mean reward", "95% CI", "graded mean", "pass@1",
                "pass@k"]
LEGEND = ("mean reward: failed rollouts count as 0 (graded mean: ok rollouts only); 95% CI: Wilson "
          "for 0/1 rewards, Wilson's bound for rewards in [0,1], bootstrap otherwise (n>=10)")


def _stats_cells(t: dict[str, Any]) -> list[str]:
    passk = [v for key, v in t.items() if key.startswith("pass@") and key != "pass@1"]
    return [str(t["rollouts"]), str(t["graded"]), str(t["failed"]), _fmt(t["mean_reward"]),
            _fmt_ci(t["ci95"], t["ci_method"]), _fmt(t["graded_mean_reward"]),
            _fmt(t["pass@1"]), _fmt(passk[0] if passk else t["pass@1"])]


def format_report(report: dict[str, Any], run_dir: str | Path | None = None) -> str:
    lines = []
    if run_dir is not None:
        lines.append(f"run {run_dir}")
    lines.append(f"rollouts: {report['rows']}  " + "  ".join(
        f"{k}={v}" for k, v in sorted(report["status"].items())))
    lines.append("")
    if report.get("variants"):
        lines.append("variants side by side:")
        table = [["variant", *STATS_HEADER, "failures", "p50 s", "p95 s"]]
        for v in report["variants"]:
            failed = ",".join(f"{k}={n}" for k, n in sorted(v["failures"].items())) or "-"
            table.append([v["variant"], *_stats_cells(v), failed,
                          _fmt(v["total_p50"]), _fmt(v["total_p95"])])
        lines += _columns(table)
        lines.append("")
    has_variants = any(t["variant"] for t in report["templates"])
    table = [(["variant"] if has_variants else []) + ["template", *STATS_HEADER]]
    for t in report["templates"]:
        table.append(([t["variant"]] if has_variants else []) + [t["template"], *_stats_cells(t)])
    if report.get("overall") and len(report["templates"]) > 1:
        overall = report["overall"]
        table.append(([""] if has_variants else []) + [overall["template"], *_stats_cells(overall)])
    lines += _columns(table)
    lines.append(f"  ({LEGEND})")
    used = [t for t in report["templates"] if t["usage"]["model_calls"] or t["usage"]["tool_calls"]]
    if used:
        lines.append("")
        lines.append("model and tool usage:")
        table = [(["variant"] if has_variants else []) + [
            "template", "model calls", "tokens", "tokens/rollout", "cost $", "tool calls",
            "tool errors"]]
        for t in used:
            u = t["usage"]
            table.append(([t["variant"]] if has_variants else []) + [
                t["template"], str(u["model_calls"]), str(u["tokens"]),
                f"{u['tokens_per_rollout']:.0f}", _fmt_cost(u["cost_usd"]),
                str(u["tool_calls"]), str(u["tool_errors"])])
        lines += _columns(table)
    lines.append("")
    lines.append("phase latency (s):")
    lines += _columns([["phase", "p50", "p95"]] + [
        [p, _fmt(v["p50"]), _fmt(v["p95"])] for p, v in report["phases"].items()])
    if report["failures"]:
        lines.append("")
        lines.append("failures by class:")
        lines += [f"  {k}: {v}" for k, v in sorted(report["failures"].items())]
    return "\n".join(lines)


def _fmt_cost(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_ci(ci: list[float] | None, method: str) -> str:
    if not ci:
        return method if method.startswith("n<") else "-"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}"


def _columns(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            for row in table]


def report_run(run_dir: str | Path, as_json: bool = False) -> str:
    read_manifest(run_dir)  # a clear error for a directory that is not a run
    report = build_report(read_results(run_dir))
    extra, keys = duplicate_rows(run_dir)
    report["duplicate_rows"] = extra
    if as_json:
        return json.dumps(report, indent=2)
    text = format_report(report, run_dir)
    if extra:  # two writers once shared this run: say so, count each rollout once
        text += (f"\nnote: {extra} duplicate row(s) for {keys} rollout key(s) in the parts; "
                 "the latest row of each key is the one counted")
    return text
