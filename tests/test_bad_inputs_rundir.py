"""Bad inputs against a run directory that already holds results (docs/bad-inputs.md).

The run directory is real: rows of three demo rollouts (local provider, rule agent) in
Parquet plus a manifest. Every refusal must leave it byte for byte as it was — the
rows and the manifest — and must come before Ray (see test_bad_inputs_cli's guard).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest

from hud_ray.agents import resolve_agent
from hud_ray.results import ResultWriter, read_results
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.runlock import LOCK_FILE
from hud_ray.tasks import expand, iter_tasks
from providers.local import LocalProvider

from .test_bad_inputs_cli import DEMO_ENV, DEMO_TASKS, assert_one_error, hud_ray


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Three real rollouts' rows (run once for the module)."""
    provider = LocalProvider(env_file=str(DEMO_ENV),
                             state_dir=str(tmp_path_factory.mktemp("ledger")))
    rollouts = list(expand(itertools.islice(iter_tasks(DEMO_TASKS), 3)))

    async def main() -> list[dict[str, Any]]:
        agent, config = resolve_agent("rule"), RolloutConfig(run_id="earlier", deadline_s=60)
        try:
            return [(await run_rollout(r, agent, provider, config)).to_row() for r in rollouts]
        finally:
            await provider.close()

    rows = asyncio.run(main())
    assert [r["status"] for r in rows] == ["ok"] * 3
    return rows


def make_run(out: Path, tasks: Path, rows: list[dict[str, Any]], run_id: str = "earlier") -> Path:
    """A run directory as `hud-ray run TASKS --agent rule` leaves it when interrupted."""
    config = {"tasks": str(tasks), "agent": "rule", "provider": "local", "repeats": 1,
              "variant": None, "provider_options": {"env_file": str(DEMO_ENV)},
              "concurrency": 8, "timeout_s": 600.0, "max_attempts": 3}
    writer = ResultWriter(out / run_id, config=config, flush_rows=2)
    for row in rows:
        writer.add(dict(row))
    writer.close("interrupted")
    return out / run_id


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """The run's results and manifest (not `writer.lock`: a refused driver held it)."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def refused(tmp_path: Path, run_dir: Path, *args: str, named: tuple[str, ...]) -> str:
    """`hud-ray run ... --out OUT --run-id ID` is refused and the run is left untouched."""
    before = snapshot(run_dir)
    assert len(before) == 2  # manifest + one Parquet part (two parts, compacted at close)
    done = hud_ray("run", *args, "--out", str(run_dir.parent), "--run-id", run_dir.name,
                   "--no-progress", cwd=tmp_path)
    line = assert_one_error(done, *named)
    assert snapshot(run_dir) == before
    assert read_results(run_dir).num_rows == 3
    return line


def test_existing_run_dir_without_resume_is_refused_and_kept(tmp_path, demo_rows):
    run_dir = make_run(tmp_path / "runs", DEMO_TASKS, demo_rows)
    refused(tmp_path, run_dir, str(DEMO_TASKS), "--agent", "rule",
            named=(f"{run_dir} already holds results", "--resume", "another --run-id"))


def test_resume_with_a_different_agent_is_refused_and_kept(tmp_path, demo_rows):
    run_dir = make_run(tmp_path / "runs", DEMO_TASKS, demo_rows)
    refused(tmp_path, run_dir, str(DEMO_TASKS), "--agent", "nop", "--resume",
            named=(f"cannot resume {run_dir} with a different config",
                   "agent: was 'rule', now 'nop'", "new --run-id"))


def test_resume_with_different_repeats_is_refused_and_kept(tmp_path, demo_rows):
    run_dir = make_run(tmp_path / "runs", DEMO_TASKS, demo_rows)
    refused(tmp_path, run_dir, str(DEMO_TASKS), "--agent", "rule", "--resume", "--repeats", "2",
            named=("repeats: was 1, now 2",))


def test_resume_with_another_task_file_is_refused_and_kept(tmp_path, demo_rows):
    run_dir = make_run(tmp_path / "runs", DEMO_TASKS, demo_rows)
    other = tmp_path / "tasks.jsonl"
    shutil.copy(DEMO_TASKS, other)
    refused(tmp_path, run_dir, str(other), "--agent", "rule", "--resume",
            "--provider-opt", f"env_file={DEMO_ENV}",
            named=(f"tasks: was '{DEMO_TASKS}', now '{other}'",))


def test_resume_with_a_bad_setting_leaves_the_manifest_untouched(tmp_path, demo_rows):
    # The settings are checked before the run directory is opened (it used to be rewritten
    # as "running" before a pydantic error about concurrency).
    run_dir = make_run(tmp_path / "runs", DEMO_TASKS, demo_rows)
    refused(tmp_path, run_dir, str(DEMO_TASKS), "--agent", "rule", "--resume",
            "--concurrency", "0", named=("concurrency (--concurrency)",))


def test_resume_after_the_task_file_broke_leaves_the_run_untouched(tmp_path, demo_rows):
    tasks = tmp_path / "tasks.jsonl"
    shutil.copy(DEMO_TASKS, tasks)
    shutil.copy(DEMO_ENV, tmp_path / "env.py")
    run_dir = make_run(tmp_path / "runs", tasks, demo_rows)
    with tasks.open("a") as fh:
        fh.write('{"env": "demo", "id": "reverse", "args": {"word": "x"}, "slug": \n')
    refused(tmp_path, run_dir, str(tasks), "--agent", "rule", "--resume",
            named=(f"{tasks}:241: malformed JSON",))


def test_output_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs directory should be\n")
    done = hud_ray("run", str(DEMO_TASKS), "--agent", "rule", "--out", str(blocker),
                   "--run-id", "r1", "--no-progress", cwd=tmp_path)
    assert_one_error(done, f"output directory {blocker / 'r1'} is not writable")
    assert blocker.read_text() == "a file where the runs directory should be\n"


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes anywhere")
def test_output_dir_without_write_permission(tmp_path):
    out = tmp_path / "runs"
    out.mkdir(mode=0o500)
    done = hud_ray("run", str(DEMO_TASKS), "--agent", "rule", "--out", str(out),
                   "--no-progress", cwd=tmp_path)
    assert_one_error(done, "is not writable")
