"""A real hud 0.6.21 env for B5 (served by `python -m hud.environment.server`): one
template whose answer an instant agent computes from the prompt. Needs hud importable."""

from hud import Environment

env = Environment("benchcount", version="1.0")


@env.template(id="count", description="count a letter")
async def count(text: str, letter: str):
    answer = yield f"How many times does the letter '{letter}' appear in '{text}'?"
    yield float(str(answer).strip() == str(text.count(letter)))
