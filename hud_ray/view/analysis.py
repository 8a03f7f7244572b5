"""Failure triage (errors clustered by a normalised signature) and the paired comparison
of two runs or two variants (win/loss/tie by task, paired bootstrap, McNemar, flips)."""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa

# Order matters: the specific shapes first, so a uuid is not eaten as hex then numbers.
_NORMALISERS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<addr>"),
    (re.compile(r"\[?[0-9a-f]*:[0-9a-f:]{3,}\]?(?::\d+)?", re.I), "<addr>"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I), "<url>"),
    (re.compile(r"(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?"), "<path>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b\d+\.\d+\b"), "<n>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b", re.I), "<id>"),
    (re.compile(r"\b[\w-]*\d[\w-]*\b"), "<n>"),
    (re.compile(r"'[^']{1,80}'|\"[^\"]{1,80}\""), "<str>"),
    (re.compile(r"\s+"), " "),
]


def signature(message: str | None) -> str:
    """An error message with what differs between occurrences of one cause (ids, numbers,
    paths, addresses, quoted values) replaced by placeholders; its first line, ≤ 160 chars."""
    text = (message or "").strip().splitlines()[0] if message and message.strip() else ""
    for pattern, placeholder in _NORMALISERS:
        text = pattern.sub(placeholder, text)
    return text.strip()[:160] or "(no message)"


def triage(table: pa.Table) -> dict[str, Any]:
    """Every non-ok rollout: a histogram of status:error_type, and clusters by
    (status, error_type, signature), each with its count by template, provider and node."""
    cols = ["rollout_key", "status", "error_type", "error_message", "template_id",
            "provider", "node_id"]
    rows = [r for r in table.select(cols).to_pylist() if r["status"] != "ok"]
    classes = Counter(f"{r['status']}:{r['error_type'] or '-'}" for r in rows)
    clusters: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["status"], r["error_type"] or "-", signature(r["error_message"]))
        c = clusters.setdefault(key, {
            "status": key[0], "error_type": key[1], "signature": key[2], "count": 0,
            "example": r["error_message"], "keys": [], "by_template": Counter(),
            "by_provider": Counter(), "by_node": Counter()})
        c["count"] += 1
        c["keys"].append(r["rollout_key"])
        c["by_template"][r["template_id"] or "-"] += 1
        c["by_provider"][r["provider"] or "-"] += 1
        c["by_node"][(r["node_id"] or "-")[:12]] += 1
    out = sorted(clusters.values(), key=lambda c: -c["count"])
    for c in out:
        for name in ("by_template", "by_provider", "by_node"):
            c[name] = c[name].most_common()
    from hud_ray.view.queries import fleet

    return {"failed": len(rows), "classes": classes.most_common(), "clusters": out,
            "fleet": fleet(table)}


def _per_task(rows: list[dict[str, Any]], threshold: float) -> dict[str, list[float]]:
    """slug -> successes (1/0) of its rollouts; a failed rollout is a miss, as in report."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        ok = r["status"] == "ok" and r["reward"] is not None and r["reward"] >= threshold
        by_task[r["slug"]].append(1.0 if ok else 0.0)
    return by_task


def compare(a_rows: list[dict[str, Any]], b_rows: list[dict[str, Any]],
            threshold: float = 1.0, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """A vs B paired by task (slug): each task's success rate on each side; a win where A's
    is higher. pass@1 difference with a paired bootstrap 95% interval over tasks; McNemar's
    exact test on tasks' pass@1 > 0.5 when there is one rollout per task a side."""
    a, b = _per_task(a_rows, threshold), _per_task(b_rows, threshold)
    shared = sorted(set(a) & set(b))
    rate_a = {t: sum(a[t]) / len(a[t]) for t in shared}
    rate_b = {t: sum(b[t]) / len(b[t]) for t in shared}
    diffs = [rate_a[t] - rate_b[t] for t in shared]
    flips = [{"slug": t, "a": rate_a[t], "b": rate_b[t], "diff": rate_a[t] - rate_b[t]}
             for t in shared if rate_a[t] != rate_b[t]]
    flips.sort(key=lambda f: (-abs(f["diff"]), f["slug"]))
    k = min([len(a[t]) for t in shared] + [len(b[t]) for t in shared], default=0)
    out: dict[str, Any] = {
        "tasks": len(shared), "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
        "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs), "k": k, "flips": flips,
        "pass@1": {"a": _mean(rate_a.values()), "b": _mean(rate_b.values()),
                   "diff": _mean(diffs), "ci95": _paired_bootstrap(diffs, resamples, seed)},
    }
    if k > 1:
        pk_a = {t: float(any(a[t])) for t in shared}
        pk_b = {t: float(any(b[t])) for t in shared}
        d = [pk_a[t] - pk_b[t] for t in shared]
        out[f"pass@{k}"] = {"a": _mean(pk_a.values()), "b": _mean(pk_b.values()),
                            "diff": _mean(d), "ci95": _paired_bootstrap(d, resamples, seed)}
    solved_a = {t: rate_a[t] > 0.5 for t in shared}
    solved_b = {t: rate_b[t] > 0.5 for t in shared}
    only_a = sum(solved_a[t] and not solved_b[t] for t in shared)
    only_b = sum(solved_b[t] and not solved_a[t] for t in shared)
    out["mcnemar"] = {"a_only": only_a, "b_only": only_b, "p": mcnemar_exact(only_a, only_b)}
    return out


def _mean(values: Any) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _paired_bootstrap(diffs: list[float], resamples: int, seed: int) -> list[float] | None:
    """Percentile bootstrap of the mean paired difference, resampling tasks (seeded)."""
    n = len(diffs)
    if n < 2:
        return None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    return [means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: discordant pairs b, c under Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
