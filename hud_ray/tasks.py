"""HUD task rows, loaded as-is from JSON, JSONL or Parquet, and expanded into rollouts.

A row is what hud's `Taskset.to_file` writes:
`{"env", "id", "args", "slug", "agent_config", "columns", "runtime_config", ...}`.
JSONL and Parquet are streamed: a million-row file is never held in memory. Every bad row
raises one `TaskFileError` naming the file, the line and the field.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from providers.base import Resources


class TaskFileError(ValueError):
    """A task file that cannot be used; the message names file, line and field."""


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    startup_timeout_s: float | None = None
    run_timeout_s: float | None = None


class RuntimeConfig(BaseModel):
    """hud's `runtime_config` (unknown fields rejected, as hud does)."""

    model_config = ConfigDict(extra="forbid")
    image: str | None = None
    compose: Any = None
    resources: Resources | None = None
    limits: Limits | None = None

    @model_validator(mode="after")
    def _image_xor_compose(self) -> RuntimeConfig:
        if self.image is not None and self.compose is not None:
            raise ValueError("runtime_config: give image or compose, not both")
        return self


def default_slug(template_id: str, args: dict[str, Any]) -> str:
    """hud 0.6.21's default, byte for byte: `id + "-" + sha1(json.dumps(args,
    sort_keys=True, default=str))[:8]`, or just `id` when there are no args."""
    if not args:
        return template_id
    canonical = json.dumps(args, sort_keys=True, default=str)
    return f"{template_id}-{hashlib.sha1(canonical.encode()).hexdigest()[:8]}"


class Task(BaseModel):
    """One HUD task row. Unknown top-level keys are kept (newer hud versions add some)."""

    model_config = ConfigDict(extra="allow")
    env: str | dict[str, Any] | None = None
    id: str = Field(min_length=1, description="template id inside the env")
    args: dict[str, Any] = Field(default_factory=dict)
    slug: str | None = None
    agent_config: dict[str, Any] | None = None
    columns: dict[str, Any] = Field(default_factory=dict)
    runtime_config: RuntimeConfig | None = None
    validation: Any = None
    verifier: Task | None = Field(
        None, description="an agent-less task whose grade is the grade of record (hud's "
        "`Task.verifier`): started after the actor task is graded, on the same sandbox, "
        "and graded with the actor's evaluation as its answer")

    @model_validator(mode="after")
    def _fill_slug(self) -> Task:
        if not self.slug:
            self.slug = default_slug(self.id, self.args)
        return self

    @field_validator("verifier")
    @classmethod
    def _verifier_on_this_sandbox(cls, verifier: Task | None, info: ValidationInfo) -> Task | None:
        if verifier is None:
            return None
        if verifier.verifier is not None:
            raise ValueError("nested verifier tasks are not supported (hud refuses them too)")
        env = info.data.get("env")
        env_name = env.get("name") if isinstance(env, dict) else env
        # hud runs a verifier that shares the actor's env and has no runtime_config of its
        # own on the actor's substrate; any other verifier needs hud's session snapshot and
        # restore between two substrates, which hud_ray does not do.
        if verifier.env_name not in (None, env_name) or verifier.runtime_config is not None:
            own = " with a runtime_config of its own" if verifier.runtime_config else ""
            raise ValueError(
                "hud_ray runs a verifier on its task's own sandbox, so it must name the same "
                f"env ({env_name!r}) and have no runtime_config; got env "
                f"{verifier.env_name!r}{own}")
        return verifier

    @property
    def env_name(self) -> str | None:
        if isinstance(self.env, dict):
            return self.env.get("name")
        return self.env

    @property
    def agent_timeout_s(self) -> float | None:
        value = (self.agent_config or {}).get("timeout_seconds")
        return float(value) if value is not None else None


def task_fingerprint(task: Task) -> str:
    """16 hex digits of sha256 over the task's canonical JSON — everything but `slug` and
    `columns` (a label and the user's own metadata). A resume reruns a rollout whose task
    changed under the same slug (README, "Resume")."""
    body = task.model_dump(mode="json", exclude={"slug", "columns"})
    canonical = json.dumps(body, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str | None:
    """sha256 of a task file's bytes (None if unreadable): resume compares task files by
    content, not by how their path was spelt."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


class Rollout(BaseModel):
    """One unit of work: a task, which repeat, under which variant."""

    task: Task
    repeat: int = 0
    variant: str | None = None
    source_line: int | None = None

    @property
    def group_id(self) -> str:
        base = self.task.slug or ""
        return f"{base}@{self.variant}" if self.variant else base

    @property
    def rollout_key(self) -> str:
        key = f"{self.task.slug}#{self.repeat}"
        return f"{key}@{self.variant}" if self.variant else key


def _field_error(path: str, line: int, exc: ValidationError) -> TaskFileError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(row)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return TaskFileError(f"{path}:{line}: field {field!r}: {err['msg']}{more}")


def _parse_row(path: str, line: int, row: Any) -> Task:
    if not isinstance(row, dict):
        raise TaskFileError(f"{path}:{line}: a task row must be a JSON object, got {type(row).__name__}")
    try:
        return Task.model_validate(row)
    except ValidationError as exc:
        raise _field_error(path, line, exc) from None


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, raw row) pairs; JSONL and Parquet are streamed."""
    file = Path(path)
    name = str(path)
    try:
        if file.suffix == ".jsonl":
            yield from _iter_jsonl(file, name)
        elif file.suffix == ".json":
            yield from _iter_json(file, name)
        elif file.suffix == ".parquet":
            yield from _iter_parquet(file, name)
        elif file.suffix == ".py" or (file.is_dir() and any(file.glob("*.py"))):
            yield from _iter_hud_source(file, name)
        else:
            raise TaskFileError(f"{name}: unknown task file type (want .json, .jsonl, "
                                ".parquet, or a hud tasks .py file)")
    except FileNotFoundError:
        raise TaskFileError(f"{name}: task file not found") from None
    except IsADirectoryError:
        raise TaskFileError(f"{name}: is a directory, not a task file (and it holds no "
                            "Python task sources)") from None
    except PermissionError:
        raise TaskFileError(f"{name}: task file is not readable (permission denied)") from None


def _iter_jsonl(file: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with file.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError as exc:
                raise TaskFileError(f"{name}:{line_no}: malformed JSON: {exc}") from None
            yield line_no, row


def _iter_json(file: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # A .json taskset is one array (or {"tasks": [...]}); it has to be parsed whole.
    try:
        data = json.loads(file.read_bytes())
    except ValueError as exc:
        raise TaskFileError(f"{name}: malformed JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        data = data["tasks"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise TaskFileError(f"{name}: expected a JSON array of task rows")
    for index, row in enumerate(data):
        yield index + 1, row  # "line" = 1-based row index in the array


def _iter_parquet(file: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    rows = _parquet_rows(file, name)
    while True:
        try:
            item = next(rows)
        except StopIteration:
            return
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise  # named by iter_rows
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError; thrift: OSError
            if isinstance(exc, TaskFileError):
                raise
            raise TaskFileError(f"{name}: not a readable Parquet file: {exc}") from None
        yield item


def _parquet_rows(file: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    # Nested columns come in two shapes. Struct: one type inferred across all rows, so each
    # row carries every other row's keys as nulls (an `arith` row gets `sentence: null`);
    # those nulls are absent keys, not args. Map: arrives as [(key, value), ...] pairs.
    nested = {f.name: f.type for f in parquet.schema_arrow
              if _is_nested(f.type)}
    row_no = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            row_no += 1
            for key, arrow_type in nested.items():
                row[key] = _from_arrow(row.get(key), arrow_type)
            # JSON-typed columns may be stored as strings
            for key in ("args", "agent_config", "columns", "runtime_config", "env"):
                value = row.get(key)
                if isinstance(value, str) and value[:1] in "{[":
                    try:
                        row[key] = json.loads(value)
                    except ValueError as exc:
                        raise TaskFileError(
                            f"{name}:{row_no}: field {key!r}: malformed JSON: {exc}"
                        ) from None
            yield row_no, {k: v for k, v in row.items() if v is not None}


def _iter_hud_source(file: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """A `tasks.py` (or a directory of them) loaded exactly as hud's
    `Taskset.from_file` loads it, each Task as the row `Taskset.to_file` would write.
    "Line" is the task's 1-based position in the taskset."""
    if not file.exists():
        raise FileNotFoundError(name)
    try:
        from hud.eval import Taskset
    except ImportError as exc:
        raise TaskFileError(
            f"{name}: a .py task file is loaded with hud's Taskset.from_file, and hud is not "
            f"importable here ({exc}): pip install 'hud-ray[hud]'") from None
    try:
        taskset = Taskset.from_file(file)
    except Exception as exc:
        raise TaskFileError(f"{name}: loading it with hud's Taskset.from_file failed: "
                            f"{_where(exc, file)}") from None
    if len(taskset) == 0:
        raise TaskFileError(f"{name}: defines no hud Task (hud collects module-level Tasks, "
                            "lists of Tasks and Tasksets)")
    for index, task in enumerate(taskset, start=1):
        yield index, task.model_dump(mode="json", exclude_none=True)


def _where(exc: BaseException, source: Path) -> str:
    """`file:line: Type: message`, the line being the deepest frame in the task source."""
    import traceback

    if isinstance(exc, SyntaxError):
        return f"{exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}"
    root = source.resolve() if source.is_dir() else source.resolve().parent
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve().is_relative_to(root)]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return f"{where}{type(exc).__name__}: {exc}"


def _is_nested(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_struct(arrow_type) or pa.types.is_map(arrow_type)
                or pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type))


def _from_arrow(value: Any, arrow_type: Any) -> Any:
    """A nested Parquet value as the JSON it stood for (see _iter_parquet)."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_map(arrow_type):
        return {k: _from_arrow(v, arrow_type.item_type) for k, v in value}
    if pa.types.is_struct(arrow_type):
        fields = {arrow_type.field(i).name: arrow_type.field(i).type
                  for i in range(arrow_type.num_fields)}
        return {k: _from_arrow(v, fields[k]) for k, v in value.items() if v is not None}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return [_from_arrow(v, arrow_type.value_type) for v in value]
    return value


class _Bucket:
    """Sorted 48-bit keys as two parallel arrays (16 + 32 bits): 6 bytes a key."""

    __slots__ = ("hi", "lo")

    def __init__(self) -> None:
        self.hi = array("H")
        self.lo = array("I")

    def __len__(self) -> int:
        return len(self.lo)

    def __getitem__(self, index: int) -> int:
        return (self.hi[index] << 32) | self.lo[index]

    def add(self, key: int) -> bool:
        """Insert `key`; False if it was already there."""
        at = bisect.bisect_left(self, key)
        if at < len(self.lo) and self[at] == key:
            return False
        self.hi.insert(at, key >> 32)
        self.lo.insert(at, key & 0xFFFFFFFF)
        return True


class SlugRegistry:
    """Duplicate-slug detection while streaming, in ~6.5 bytes a row (≈ 7.7 MiB RSS per
    million, measured): a 56-bit digest of every slug — 8 bits pick one of 256 buckets,
    48 are kept there, sorted (a Python dict of ints cost ~117 bytes a row). Buckets of
    thousands of keys: an insert moves a few KiB, and few reallocations fragment the heap.
    No line numbers are kept: on a hit the first line is found again by `locate`
    (re-reading the file), which also proves the hit a real duplicate, not two slugs
    sharing a digest (p ~ 7e-6 in a million rows)."""

    BUCKET_BITS = 8

    def __init__(self, source: str, locate: Callable[[str], int | None] | None = None) -> None:
        self.source = source
        self.locate = locate
        self._buckets = [_Bucket() for _ in range(1 << self.BUCKET_BITS)]

    def add(self, slug: str, line: int, *, defaulted: bool = False) -> None:
        digest = int.from_bytes(hashlib.blake2b(slug.encode(), digest_size=8).digest(), "big")
        bucket = self._buckets[digest >> (64 - self.BUCKET_BITS)]
        if bucket.add((digest >> (16 - self.BUCKET_BITS)) & 0xFFFF_FFFF_FFFF):
            return
        first = self.locate(slug) if self.locate is not None else None
        if self.locate is not None and (first is None or first >= line):
            return  # two slugs, one digest (p ~ 3e-8 in a million rows): not a duplicate
        if first != line:
            hint = (
                "; a default slug keeps only 8 hex digits of sha1(args), so tasksets past"
                " ~100k rows are likely to collide: give these rows an explicit `slug`"
                if defaulted else ""
            )
            where = f"lines {first} and {line}" if first else f"line {line} (and an earlier one)"
            raise TaskFileError(
                f"{self.source}: duplicate slug {slug!r} on {where}"
                f" (slugs must be unique in a taskset{hint})"
            )


def iter_tasks(path: str | Path) -> Iterator[tuple[int, Task]]:
    """Validated tasks with their line numbers, streamed; duplicate slugs are an error."""
    name = str(path)
    slugs = SlugRegistry(name, locate=lambda slug: _first_line_of(path, slug))
    for line, row in iter_rows(path):
        task = _parse_row(name, line, row)
        slugs.add(task.slug or "", line, defaulted=not row.get("slug"))
        yield line, task


def _first_line_of(path: str | Path, slug: str) -> int | None:
    """The first line whose task has `slug` (the error path of a duplicate: re-read)."""
    for line, row in iter_rows(path):
        try:
            task = Task.model_validate(row)
        except ValidationError:
            continue
        if task.slug == slug:
            return line
    return None


def load_tasks(source: str | Path | Iterable[Task | dict[str, Any]]) -> list[Task]:
    """Every task of a file or an iterable, validated (small tasksets, notebooks)."""
    return [task for _, task in tasks_from(source)]


def tasks_from(
    source: str | Path | Iterable[Task | dict[str, Any]],
) -> Iterator[tuple[int, Task]]:
    if isinstance(source, str | Path):
        yield from iter_tasks(source)
        return
    rows = source if isinstance(source, list | tuple) else None
    locate = None if rows is None else (lambda slug: _first_index_of(rows, slug))
    slugs = SlugRegistry("<tasks>", locate=locate)
    for index, item in enumerate(source, start=1):
        task = item if isinstance(item, Task) else _parse_row("<tasks>", index, item)
        slugs.add(task.slug or "", index)
        yield index, task


def _first_index_of(rows: list[Any] | tuple[Any, ...], slug: str) -> int | None:
    for index, item in enumerate(rows, start=1):
        try:
            task = item if isinstance(item, Task) else Task.model_validate(item)
        except ValidationError:
            continue
        if task.slug == slug:
            return index
    return None


def expand(
    tasks: Iterable[tuple[int, Task]], repeats: int = 1, variant: str | None = None
) -> Iterator[Rollout]:
    """Rollouts in task order; repeats of one task share its group_id."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for line, task in tasks:
        for repeat in range(repeats):
            yield Rollout(task=task, repeat=repeat, variant=variant, source_line=line)


def count_rows(path: str | Path) -> int | None:
    """Row count without parsing (for progress); None when unknown."""
    file = Path(path)
    try:
        if file.suffix == ".jsonl":
            with file.open("rb") as fh:
                return sum(1 for raw in fh if raw.strip())
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(file).metadata.num_rows
    except (OSError, ValueError):  # unreadable: the row scan names the file
        return None
    return None
