"""USD per million tokens by model, for the `cost_usd` column.

The built-in table holds a few common models' list prices and is only a default: list
prices change and endpoints differ (a self-hosted vLLM costs what your GPUs cost). Set
your own with `prices={"my-model": {"input": 0.2, "output": 0.8}}` (API),
`--price-table prices.yaml` (CLI), or a sweep's `prices:`; entries there win. A model
found in neither is NULL cost, never an error. Matching is exact, then by the longest
table key the model name starts with (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`).
"""

from __future__ import annotations

from typing import Any

DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
    "o3-mini": {"input": 1.10, "output": 4.40},
    "claude-3-5-haiku": {"input": 0.80, "output": 4.00},
    "claude-sonnet-4": {"input": 3.00, "output": 15.00},
}


def price_of(model: str | None, prices: dict[str, Any] | None = None) -> dict[str, float] | None:
    if not model:
        return None
    table = {**DEFAULT_PRICES, **(prices or {})}
    if model in table:
        return table[model]
    prefixes = [key for key in table if model.startswith(key)]
    return table[max(prefixes, key=len)] if prefixes else None


def cost_usd(model: str | None, prompt_tokens: int | None, completion_tokens: int | None,
             prices: dict[str, Any] | None = None) -> float | None:
    price = price_of(model, prices)
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * float(price.get("input", 0.0))
            + completion_tokens * float(price.get("output", 0.0))) / 1e6


def check_prices(prices: Any, where: str = "prices") -> dict[str, dict[str, float]]:
    """A price table from a user, validated: {model: {"input": $/1M, "output": $/1M}}."""
    if prices is None:
        return {}
    if not isinstance(prices, dict):
        raise ValueError(f"{where}: expected a mapping of model -> {{input, output}}, "
                         f"got {type(prices).__name__}")
    table: dict[str, dict[str, float]] = {}
    for model, price in prices.items():
        if not isinstance(price, dict) or not set(price) <= {"input", "output"}:
            raise ValueError(f"{where}: {model!r}: expected {{input: $/1M tokens, output: "
                             f"$/1M tokens}}, got {price!r}")
        try:
            table[str(model)] = {k: float(v) for k, v in price.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {model!r}: prices must be numbers, got {price!r}") from None
        if any(v < 0 for v in table[str(model)].values()):
            raise ValueError(f"{where}: {model!r}: prices must be >= 0")
    return table
