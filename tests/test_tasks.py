"""Task files: HUD rows from JSONL / JSON / Parquet; one clear TaskFileError per bad input."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hud_ray.tasks import (
    Task,
    TaskFileError,
    count_rows,
    default_slug,
    expand,
    iter_tasks,
    load_tasks,
)

from .fakes.procs import DEMO_TASKS


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROW = {"env": "demo", "id": "count", "args": {"sentence": "banana", "letter": "a"}}


def only_error(path: Path) -> str:
    with pytest.raises(TaskFileError) as info:
        list(iter_tasks(path))
    return str(info.value)


def test_demo_taskset_loads_with_hud_slugs():
    tasks = load_tasks(DEMO_TASKS)
    assert len(tasks) == 240 == count_rows(DEMO_TASKS)
    assert {t.id for t in tasks} == {"count", "arith", "reverse", "sort", "kv_lookup", "riddle"}
    # hud's default slug (id + sha1(args)[:8]); rows with equal args were given a suffix
    assert all(t.slug.startswith(default_slug(t.id, t.args)) for t in tasks)
    assert len({t.slug for t in tasks}) == 240
    assert tasks[0].agent_timeout_s == 30 and tasks[0].columns == {"difficulty": "easy"}


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [ROW, {**ROW, "args": {}}, '{"env": "demo", "id": '])
    message = only_error(path)
    assert message.startswith(f"{path}:3: malformed JSON"), message


def test_blank_lines_are_skipped_but_count_for_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [ROW, "", "   ", "not json"])
    assert only_error(path).startswith(f"{path}:4: ")


def test_missing_id_names_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [ROW, {"env": "demo", "args": {}}])
    message = only_error(path)
    assert message.startswith(f"{path}:2: field 'id'") and "required" in message, message


@pytest.mark.parametrize("row, field", [
    ({**ROW, "id": ""}, "id"),
    ({**ROW, "args": ["banana"]}, "args"),
    ({**ROW, "agent_config": "fast"}, "agent_config"),
    ({**ROW, "runtime_config": {"image": "x", "compose": {"a": 1}}}, "runtime_config"),
    ({**ROW, "runtime_config": {"resources": {"gpus": 2}}}, "runtime_config.resources.gpus"),
    ({**ROW, "runtime_config": {"limits": {"run_timeout_s": "soon"}}},
     "runtime_config.limits.run_timeout_s"),
])
def test_bad_fields_are_named(tmp_path, row, field):
    path = write_jsonl(tmp_path / "t.jsonl", [row])
    assert only_error(path).startswith(f"{path}:1: field {field!r}")


def test_runtime_config_with_an_unknown_field_is_rejected_like_hud(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        ROW, {**ROW, "args": {}, "runtime_config": {"image": "org/env:1", "imagee": "typo"}}])
    message = only_error(path)
    assert message.startswith(f"{path}:2: field 'runtime_config.imagee'"), message
    assert "not permitted" in message


def test_a_row_that_is_not_an_object_is_named(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [ROW, "[1, 2, 3]"])
    assert only_error(path) == f"{path}:2: a task row must be a JSON object, got list"


def test_duplicate_slug_names_both_lines(tmp_path):
    other = {**ROW, "args": {"sentence": "cherry", "letter": "r"}}
    path = write_jsonl(tmp_path / "t.jsonl", [ROW, other, {**ROW, "columns": {"x": 1}}])
    message = only_error(path)
    assert f"duplicate slug {default_slug('count', ROW['args'])!r} on lines 1 and 3" in message
    assert message.startswith(str(path))


def test_default_slugs_of_different_args_can_collide_and_the_error_says_what_to_do(tmp_path):
    # hud's default slug keeps 32 bits of sha1: these two (of 150k generated) collide.
    a = {"env": "demo", "id": "count", "args": {"sentence": "x40246", "letter": "x"}}
    b = {"env": "demo", "id": "count", "args": {"sentence": "x47334", "letter": "x"}}
    assert default_slug("count", a["args"]) == default_slug("count", b["args"])
    path = write_jsonl(tmp_path / "t.jsonl", [a, b])
    message = only_error(path)
    assert "duplicate slug 'count-52de3bdc' on lines 1 and 2" in message
    assert "explicit `slug`" in message
    assert len(list(iter_tasks(write_jsonl(tmp_path / "u.jsonl", [
        {**a, "slug": "a"}, {**b, "slug": "b"}])))) == 2


def test_explicit_slugs_make_equal_args_distinct(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{**ROW, "slug": "a"}, {**ROW, "slug": "b"}])
    assert [t.slug for _, t in iter_tasks(path)] == ["a", "b"]


def test_unknown_extension_and_missing_file_and_directory(tmp_path):
    csv = tmp_path / "tasks.csv"
    csv.write_text("env,id\n")
    assert "unknown task file type" in only_error(csv) and str(csv) in only_error(csv)
    missing = tmp_path / "nope.jsonl"
    assert only_error(missing) == f"{missing}: task file not found"
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    assert "is a directory" in only_error(folder)


def test_json_array_and_tasks_object_load_like_jsonl(tmp_path):
    rows = [json.loads(line) for line in DEMO_TASKS.read_text().splitlines()[:20]]
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "b.json").write_text(json.dumps({"tasks": rows}))
    expected = load_tasks(write_jsonl(tmp_path / "c.jsonl", rows))
    assert load_tasks(tmp_path / "a.json") == expected == load_tasks(tmp_path / "b.json")
    (tmp_path / "bad.json").write_text(json.dumps([rows[0], {"env": "demo"}]))
    assert only_error(tmp_path / "bad.json").startswith(f"{tmp_path / 'bad.json'}:2: field 'id'")


def test_parquet_with_json_string_columns_loads_the_same_tasks(tmp_path):
    rows = [json.loads(line) for line in DEMO_TASKS.read_text().splitlines()]
    table = pa.table({
        "env": [r["env"] for r in rows],
        "id": [r["id"] for r in rows],
        "args": [json.dumps(r["args"]) for r in rows],
        "slug": [r["slug"] for r in rows],
        "agent_config": [json.dumps(r["agent_config"]) for r in rows],
        "columns": [json.dumps(r["columns"]) for r in rows],
    })
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=50)
    assert load_tasks(tmp_path / "t.parquet") == load_tasks(DEMO_TASKS)
    assert count_rows(tmp_path / "t.parquet") == 240


def test_parquet_with_nested_struct_columns_loads_the_same_tasks(tmp_path):
    # pyarrow/pandas infer one struct type for `args` across all templates: every row
    # then carries every template's keys, null where absent. Those nulls are not args.
    rows = [json.loads(line) for line in DEMO_TASKS.read_text().splitlines()]
    table = pa.Table.from_pylist(rows)
    assert pa.types.is_struct(table.schema.field("args").type)
    pq.write_table(table, tmp_path / "t.parquet")
    assert load_tasks(tmp_path / "t.parquet") == load_tasks(DEMO_TASKS)


def test_parquet_map_column_loads_as_a_dict(tmp_path):
    table = pa.table({
        "env": ["demo"], "id": ["count"],
        "args": pa.array([[("sentence", "banana"), ("letter", "a")]],
                         type=pa.map_(pa.string(), pa.string())),
    })
    pq.write_table(table, tmp_path / "t.parquet")
    (task,) = load_tasks(tmp_path / "t.parquet")
    assert task.args == {"sentence": "banana", "letter": "a"}
    assert task.slug == default_slug("count", {"sentence": "banana", "letter": "a"})


def test_parquet_bad_row_is_named_by_row_number(tmp_path):
    pq.write_table(pa.table({"env": ["demo", "demo"], "id": ["count", None]}),
                   tmp_path / "t.parquet")
    message = only_error(tmp_path / "t.parquet")
    assert message.startswith(f"{tmp_path / 't.parquet'}:2: field 'id'"), message


def test_jsonl_is_streamed_lazily(tmp_path):
    path = tmp_path / "big.jsonl"
    good = json.dumps({"env": "demo", "id": "count", "slug": "S",
                       "args": {"sentence": "x", "letter": "x"}})
    with path.open("w") as fh:
        for i in range(1, 150_000):
            fh.write(good.replace('"x", "letter"', f'"x{i}", "letter"')
                     .replace('"S"', f'"s{i}"') + "\n")
        fh.write('{"broken": \n')  # line 150000
    tasks = iter_tasks(path)
    assert inspect.isgenerator(tasks)
    first = [next(tasks) for _ in range(10)]
    assert [line for line, _ in first] == list(range(1, 11))
    assert first[9][1].args["sentence"] == "x10"
    tasks.close()
    # the bad line is really there, as line 150000, and it is malformed
    with path.open("rb") as fh:
        fh.seek(-200, 2)
        *_, last = fh.read().splitlines()
    assert last == b'{"broken": ' and sum(1 for _ in path.open("rb")) == 150_000
    with pytest.raises(ValueError):
        json.loads(last)


def test_expand_repeats_share_group_ids_and_keys_are_unique():
    tasks = list(iter_tasks(DEMO_TASKS))[:3]
    rollouts = list(expand(tasks, repeats=4, variant="gpt"))
    assert len(rollouts) == 12 and len({r.rollout_key for r in rollouts}) == 12
    assert rollouts[0].rollout_key == f"{tasks[0][1].slug}#0@gpt"
    assert {r.group_id for r in rollouts[:4]} == {f"{tasks[0][1].slug}@gpt"}
    assert [r.source_line for r in rollouts[:5]] == [1, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="repeats"):
        list(expand(tasks, repeats=0))


def test_unknown_top_level_keys_are_kept_and_env_may_be_an_object():
    task = Task.model_validate({"env": {"name": "demo", "version": "1"}, "id": "count",
                                "future_field": 7})
    assert task.env_name == "demo" and task.model_extra == {"future_field": 7}
    assert task.slug == "count"


@pytest.mark.slow
def test_the_slug_registry_grows_under_10_mib_per_million_rows():
    """Issue 20 item 8: the registry keeps every row of a streamed task file (it was a dict
    of ints: ~117 MiB per million rows). Measured in a fresh process, after a warm-up."""
    import subprocess
    import sys

    probe = (
        "from hud_ray.tasks import SlugRegistry\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "r = SlugRegistry('x')\n"
        "for i in range(100_000): r.add(f'count-{i}', i + 1)\n"
        "base = rss()\n"
        "for i in range(100_000, 1_100_000): r.add(f'count-{i}', i + 1)\n"
        "print(rss() - base)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=600, check=True)
    growth_mib = int(done.stdout) / 2**20
    print(f"slug registry: {growth_mib:.1f} MiB per 1,000,000 rows")
    assert growth_mib <= 10, f"{growth_mib:.1f} MiB per million rows"
