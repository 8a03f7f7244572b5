"""`hud-ray report RUN_DIR`: counts by status, reward and pass@k by template, phase latency.

Pure pyarrow + stdlib, so a report needs nothing beyond the core install.
"""

from __future__ import annotations

import json
import math
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


def mean_ci(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width of a normal-approximation 95% confidence interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, z * math.sqrt(var / n)


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
    return {"rows": len(rows), "status": dict(status_counts), "templates": templates,
            "phases": phases, "failures": dict(failures), "variants": compare}


def _variant_stats(variant: str, rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """One variant's headline numbers, for the side-by-side comparison."""
    overall = _template_stats(variant, "*", rows, threshold)
    totals = [r["total_s"] for r in rows if r.get("total_s") is not None]
    failed: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["status"] != "ok":
            failed[r["status"]] += 1
    passk = {k: v for k, v in overall.items() if k.startswith("pass@")}
    return {"variant": variant, "rollouts": len(rows), "mean_reward": overall["mean_reward"],
            "ci95": overall["ci95"], **passk, "failures": dict(failed),
            "total_p50": percentile(totals, 0.5), "total_p95": percentile(totals, 0.95)}


def _template_stats(variant: str, template: str, group: list[dict[str, Any]],
                    threshold: float) -> dict[str, Any]:
    rewards = [r["reward"] for r in group if r["reward"] is not None]
    by_task: dict[str, list[float]] = defaultdict(list)
    for r in group:
        by_task[r["group_id"]].append(r["reward"] if r["reward"] is not None else 0.0)
    k = max(len(v) for v in by_task.values())
    passes = {
        f"pass@{kk}": sum(pass_at_k(len(v), sum(x >= threshold for x in v), kk)
                          for v in by_task.values()) / len(by_task)
        for kk in sorted({1, k})
    }
    mean, ci = mean_ci(rewards) if rewards else (None, None)
    return {"variant": variant, "template": template, "rollouts": len(group),
            "graded": len(rewards), "mean_reward": mean, "ci95": ci, **passes}


def format_report(report: dict[str, Any], run_dir: str | Path | None = None) -> str:
    lines = []
    if run_dir is not None:
        lines.append(f"run {run_dir}")
    lines.append(f"rollouts: {report['rows']}  " + "  ".join(
        f"{k}={v}" for k, v in sorted(report["status"].items())))
    lines.append("")
    if report.get("variants"):
        lines.append("variants side by side:")
        table = [["variant", "n", "mean reward", "±95%", "pass@1", "pass@k", "failed",
                  "p50 s", "p95 s"]]
        for v in report["variants"]:
            passk = [x for key, x in v.items() if key.startswith("pass@") and key != "pass@1"]
            failed = ",".join(f"{k}={n}" for k, n in sorted(v["failures"].items())) or "-"
            table.append([v["variant"], str(v["rollouts"]), _fmt(v["mean_reward"]),
                          _fmt(v["ci95"]), _fmt(v["pass@1"]),
                          _fmt(passk[0] if passk else v["pass@1"]), failed,
                          _fmt(v["total_p50"]), _fmt(v["total_p95"])])
        lines += _columns(table)
        lines.append("")
    has_variants = any(t["variant"] for t in report["templates"])
    header = (["variant"] if has_variants else []) + [
        "template", "n", "mean reward", "±95%", "pass@1", "pass@k"]
    table = [header]
    for t in report["templates"]:
        passk = [v for key, v in t.items() if key.startswith("pass@") and key != "pass@1"]
        table.append(([t["variant"]] if has_variants else []) + [
            t["template"], str(t["rollouts"]), _fmt(t["mean_reward"]), _fmt(t["ci95"]),
            _fmt(t["pass@1"]), _fmt(passk[0] if passk else t["pass@1"])])
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
