"""One task's suspended template generator, between `tasks.start` and `tasks.grade`."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from .env import Template


def score_frame(template_id: str, evaluation: Any) -> dict[str, Any]:
    """Normalise a template's grade yield to a `{"score": float, ...}` frame."""
    if isinstance(evaluation, dict):
        frame = dict(evaluation)
        if "score" not in frame:
            raise TypeError(f"template {template_id!r} graded with a dict without a 'score' key "
                            f"(keys: {sorted(map(str, frame))})")
        score = frame["score"]
    else:
        score = getattr(evaluation, "reward", evaluation)
        frame = {"score": score}
    # hud accepts any int/float, bool included (True grades as 1.0): so do we, or an env
    # written for hud would fail here.
    if not isinstance(score, int | float):
        raise TypeError(f"template {template_id!r} graded with {type(score).__name__}, not a number")
    if not math.isfinite(score):
        raise ValueError(f"template {template_id!r} graded with a non-finite score ({score!r})")
    frame["score"] = float(score)
    return frame


class Runner:
    """One task's suspended generator between `tasks.start` and `tasks.grade`."""

    def __init__(self, template: Template, args: dict[str, Any]) -> None:
        try:
            template.signature.bind(**args)
        except TypeError as exc:
            raise TypeError(f"template {template.id!r}: bad args {sorted(args)}: {exc}") from None
        self.template = template
        self.args = args
        self.gen: Any = None

    async def start(self) -> dict[str, Any]:
        self.gen = self.template.func(**self.template.coerce_args(self.args))
        prompt = await self.gen.__anext__()
        if isinstance(prompt, dict) and "prompt" in prompt:
            return prompt
        return {"prompt": prompt}

    async def grade(self, answer: Any) -> dict[str, Any]:
        try:
            evaluation = await self.gen.asend(answer)
        except StopAsyncIteration:
            evaluation = 0.0
        finally:
            await self.cancel()
        return score_frame(self.template.id, evaluation)

    async def cancel(self) -> None:
        if self.gen is not None:
            gen, self.gen = self.gen, None
            with contextlib.suppress(Exception):
                await gen.aclose()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value
