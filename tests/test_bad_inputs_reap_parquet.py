"""`hud-ray reap` without --provider, a provider listed but not installed, and a corrupt
Parquet task file: one clear line each, no traceback (issue 16 items 1 and 3)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hud_ray import cli
from providers import registry
from tests.test_bad_inputs_cli import (
    DEMO_ENV,
    DEMO_TASKS,
    REPO,
    hud_ray,
    run_error,
)

# A driver that creates one local sandbox for run "crashed" and dies without cleanup.
LEAK_ONE = r"""
import asyncio, os, sys
from providers import LABEL_RUN, LABEL_ROLLOUT, SandboxSpec, get_provider

async def main():
    provider = get_provider("local", env_file=sys.argv[1])
    handle = await provider.create(SandboxSpec(name="hudray-leak0001"),
                                   {LABEL_RUN: "crashed", LABEL_ROLLOUT: "t#0"})
    await provider.ready(handle, 30)
    print(handle.data.get("pid") or "", flush=True)

loop = asyncio.new_event_loop()
loop.run_until_complete(main())
os._exit(0)  # like kill -9: no teardown, no ledger cleanup
"""


def _envkit_pids(state_dir: str) -> set[int]:
    found = set()
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if "hud_ray.envkit" in (proc.info["cmdline"] or []) and (
                    proc.info["environ"] or {}).get("HUD_RAY_STATE_DIR") == state_dir:
                found.add(proc.pid)
        except (psutil.Error, TypeError):
            continue
    return found


def test_reap_without_a_provider_reaps_what_it_can_and_names_the_skipped(tmp_path):
    state = os.environ["HUD_RAY_STATE_DIR"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "DAYTONA_"))}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path))  # no ~/.modal.toml either
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # not this machine's daemon
    subprocess.run([sys.executable, "-c", LEAK_ONE, str(DEMO_ENV)], env=env, check=True,
                   timeout=60, capture_output=True)
    leaked = _envkit_pids(state)
    assert len(leaked) == 1, leaked
    done = hud_ray("reap", cwd=tmp_path, env=env)
    assert done.code == 0 and "Traceback" not in done.stderr, done.stderr
    assert "local: destroying hudray-leak0001" in done.stdout, done.stdout
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("destroyed 1 sandbox(es); skipped "), summary
    # One line per skipped provider, naming it and why; credentials-less clouds among them.
    for line in done.lines:
        assert re.match(r"^[a-z_]+: skipped \(provider '[a-z_]+'", line), line
    skipped = {line.split(":")[0] for line in done.lines}
    assert {"modal", "daytona"} <= skipped and "local" not in skipped, done.stderr
    assert "no credentials: MODAL_TOKEN_ID and MODAL_TOKEN_SECRET" in done.stderr
    assert "no API key: set DAYTONA_API_KEY" in done.stderr
    assert "attach" not in skipped  # borrowed servers: nothing to reap, nothing to say
    gone = [pid for pid in leaked if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not gone, gone


def test_a_provider_listed_but_not_installed_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(registry.BUILTIN, "ghost", ("providers.ghost", "GhostProvider", None))
    assert cli.main(["reap", "--provider", "ghost"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hud-ray: error: provider 'ghost' is not part of this install "
                   f"(providers.ghost is missing); available: {', '.join(registry.installed())}"]
    assert cli.main(["run", str(DEMO_TASKS), "--agent", "rule", "--provider", "ghost"]) == 2
    assert "provider 'ghost' is not part of this install" in capsys.readouterr().err


def test_reap_all_goes_on_past_a_missing_provider(monkeypatch, capsys):
    monkeypatch.setitem(registry.BUILTIN, "ghost", ("providers.ghost", "GhostProvider", None))
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert cli.main(["reap", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "ghost: skipped (provider 'ghost' is not part of this install" in err
    assert out.strip().splitlines()[-1].startswith("would destroy 0 sandbox(es); skipped ")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_parquet_task_file_names_the_file(tmp_path, damage):
    path = tmp_path / "tasks.parquet"
    if damage == "garbage":
        path.write_bytes(b"PAR1 this is not parquet at all \x00\x01\x02" * 10)
    else:
        rows = [{"env": "demo", "id": "reverse", "args": json.dumps({"word": f"w{i}"}), "slug": f"s{i}"}
                for i in range(200)]
        pq.write_table(pa.Table.from_pylist(rows), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] + data[-8:])  # footer length now lies
    run_error(tmp_path, str(path), "--agent", "rule", "--provider-opt",
              f"env_file={DEMO_ENV}", named=(str(path), "not a readable Parquet file"))
