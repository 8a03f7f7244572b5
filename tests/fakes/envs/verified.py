"""An envkit env with an agent-less verifier template (hud's `Task.verifier`): `echo`'s
grade is 1.0 for the right answer, and `half` grades the actor's evaluation at half."""

from hud_ray.envkit import Environment

env = Environment("verified")


@env.template("echo")
async def echo(word: str):
    answer = yield f"Say {word}."
    yield 1.0 if answer == word else 0.0


@env.template("half")
async def half(weight: float = 0.5):
    evaluation = yield "verify"
    score = evaluation.get("score", 0.0) if isinstance(evaluation, dict) else -1.0
    yield weight * float(score)

