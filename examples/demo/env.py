"""The hud_ray demo env: six templates, one of which a rule-based agent cannot solve.

Served by envkit (`python -m hud_ray.envkit examples/demo/env.py --port 0`). The shape is
hud's: yield the prompt, receive the answer, yield the score.
"""

from __future__ import annotations

import asyncio

from hud_ray.envkit import Environment

env = Environment(name="demo", version="1.0.0")

# A tiny key-value service inside the sandbox, reached through `tunnel.open` ("kv").
KV_STORE = {f"key{i}": f"value-{i * 7919 % 1000:03d}" for i in range(100)}


@env.capability("kv")
async def kv_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        verb, _, key = line.decode().strip().partition(" ")
        value = KV_STORE.get(key, "") if verb == "GET" else ""
        writer.write(f"{value}\n".encode())
        await writer.drain()
    writer.close()


@env.template("count", description="count a letter in a sentence")
async def count(sentence: str, letter: str):
    answer = yield f"How many times does the letter '{letter}' appear in: '{sentence}'? Answer with a number."
    yield float(str(answer).strip() == str(sentence.lower().count(letter.lower())))


@env.template("arith", description="evaluate integer arithmetic")
async def arith(a: int, b: int, op: str):
    answer = yield f"Compute {a} {op} {b}. Answer with an integer."
    expected = {"+": a + b, "-": a - b, "*": a * b}[op]
    yield float(str(answer).strip() == str(expected))


@env.template("reverse", description="reverse a word")
async def reverse(word: str):
    answer = yield f"Reverse the word '{word}'. Answer with the reversed word only."
    yield float(str(answer).strip() == word[::-1])


@env.template("sort", description="sort numbers ascending")
async def sort(numbers: list):
    shown = ", ".join(str(n) for n in numbers)
    answer = yield f"Sort these numbers in ascending order, comma-separated: {shown}"
    got = [part.strip() for part in str(answer).split(",")]
    expected = [str(n) for n in sorted(numbers)]
    # Partial credit: the fraction of positions that are right.
    right = sum(1 for g, e in zip(got, expected, strict=False) if g == e)
    yield right / len(expected) if len(got) == len(expected) else 0.0


@env.template("kv_lookup", description="read a value through the kv capability")
async def kv_lookup(key: str):
    answer = yield (
        f"Open the 'kv' capability, send 'GET {key}' and answer with the value it returns."
    )
    yield float(str(answer).strip() == KV_STORE[key])


@env.template("riddle", description="a riddle (needs world knowledge)")
async def riddle(question: str, solution: str):
    answer = yield f"Riddle: {question} Answer with one word."
    yield float(str(answer).strip().lower() == solution)
