"""Regenerate examples/demo/tasks.jsonl (deterministic): `python examples/demo/make_tasks.py`."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["lantern", "orchard", "ribbon", "glacier", "harbor", "meadow", "cobalt", "tundra",
         "saffron", "quartz", "violet", "ember", "falcon", "juniper", "mosaic", "nectar"]
SENTENCES = ["the quick brown fox jumps over the lazy dog", "banana bandana cabana",
             "mississippi river runs south", "a stitch in time saves nine",
             "peter piper picked a peck of pickled peppers", "she sells sea shells"]
RIDDLES = [("What has keys but cannot open locks?", "piano"),
           ("What gets wetter the more it dries?", "towel"),
           ("What has a neck but no head?", "bottle"),
           ("What has hands but cannot clap?", "clock"),
           ("What can you catch but not throw?", "cold")]


def rows(per_template: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(per_template):
        sentence = rng.choice(SENTENCES)
        out.append({"id": "count", "args": {"sentence": sentence, "letter": rng.choice("aeiopst")},
                    "columns": {"difficulty": "easy"}, "_n": i})
        out.append({"id": "arith", "args": {"a": rng.randint(-99, 999), "b": rng.randint(1, 99),
                                            "op": rng.choice("+-*")},
                    "columns": {"difficulty": "easy"}, "_n": i})
        out.append({"id": "reverse", "args": {"word": rng.choice(WORDS) + str(i)},
                    "columns": {"difficulty": "easy"}})
        out.append({"id": "sort", "args": {"numbers": [rng.randint(0, 500) for _ in range(6)]},
                    "columns": {"difficulty": "medium"}})
        out.append({"id": "kv_lookup", "args": {"key": f"key{rng.randint(0, 99)}"},
                    "columns": {"difficulty": "medium"}, "_n": i})
        question, solution = rng.choice(RIDDLES)
        out.append({"id": "riddle", "args": {"question": question, "solution": solution},
                    "columns": {"difficulty": "hard"}, "_n": i})
    return out


def main() -> None:
    from hud_ray.tasks import default_slug

    rng = random.Random(7)
    lines, seen = [], set()
    for row in rows(40, rng):
        n = row.pop("_n", None)
        slug = default_slug(row["id"], row["args"])
        if slug in seen:  # identical args drawn twice: disambiguate, as a taskset author would
            slug = f"{slug}-{n}"
        seen.add(slug)
        lines.append(json.dumps({"env": "demo", "id": row["id"], "args": row["args"],
                                 "slug": slug, "agent_config": {"timeout_seconds": 30},
                                 "columns": row["columns"]}))
    Path(__file__).with_name("tasks.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} rows")


if __name__ == "__main__":
    main()
