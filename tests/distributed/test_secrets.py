"""Issue 16 item 3: a secret given to a run is never written — not in the manifest, the
Parquet rows, the driver's output, hud_ray's state, nor the private Ray's session logs —
even when the env quotes it back in an error."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from hud_ray.results import read_results

from .conftest import REPO, cli, kill_tree

ECHO_ENV = "tests/fakes/envs/echo_secret.py"


def _files_holding(root: Path, needles: dict[str, str], skip: Path | None = None) -> list[str]:
    """'path: name' for every regular file under `root` that contains a needle's value."""
    hits = []
    for path in root.rglob("*"):
        if skip is not None and skip in path.parents:
            continue
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits += [f"{path}: {name}" for name, value in needles.items() if value.encode() in data]
    return hits


def _run_and_grep(tmp_path, args: list[str], needles: dict[str, str],
                  extra_env: dict[str, str] | None = None) -> list[dict]:
    """Run `hud-ray ARGS` with a private Ray temp dir; assert no needle is anywhere."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="hr-ray-", dir="/tmp"))
    state = Path(os.environ["HUD_RAY_STATE_DIR"])
    run_dir = tmp_path / "runs" / "secret"
    driver = cli(*args, "--out", str(tmp_path / "runs"), "--run-id", "secret", "--no-progress",
                 env={"HUD_RAY_STATE_DIR": str(state), "RAY_TMPDIR": str(ray_tmp),
                      **(extra_env or {})})
    try:
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        kill_tree(driver)
    try:
        assert driver.returncode == 0, stderr[-4000:]
        assert any((ray_tmp / "ray").glob("session_*/logs/*")), "no Ray session logs to check"
        leaks = _files_holding(run_dir, needles)
        leaks += _files_holding(ray_tmp, needles)
        # hud_ray's own state (ledgers); the Modal fake's files stand for Modal's side.
        leaks += _files_holding(state, needles, skip=state / "modal_fake")
        leaks += [f"driver {name}: {n}" for name, text in (("stdout", stdout), ("stderr", stderr))
                  for n, v in needles.items() if v in text]
        assert not leaks, "secret values written:\n" + "\n".join(leaks)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return read_results(run_dir).to_pylist()


def _manifest_options(tmp_path) -> dict:
    return json.loads((tmp_path / "runs" / "secret" / "manifest.json").read_text())[
        "config"]["provider_options"]


@pytest.mark.slow
def test_secrets_never_reach_disk_or_ray_logs_through_the_cli(tmp_path):
    pytest.importorskip("modal")
    from tests.fakes import modal_fake

    needles = {
        "OPENAI_API_KEY": f"sk-test-{secrets.token_hex(12)}",
        "url password": f"pw-{secrets.token_hex(10)}",
        "url user": f"alice{secrets.token_hex(4)}",
        "HUD_API_KEY (forwarded)": f"hud-{secrets.token_hex(12)}",
    }
    env_opt = {"OPENAI_API_KEY": needles["OPENAI_API_KEY"],
               "UPSTREAM_URL": f"https://{needles['url user']}:{needles['url password']}"
                               "@upstream.invalid/v1"}
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"env": "echo_secret", "id": tid, "args": {"word": w},
                                         "slug": f"{tid}-{w}"}) + "\n"
                             for tid in ("fine", "leak") for w in ("a", "b")))
    options = modal_fake.provider_options(
        command=f"python -m hud_ray.envkit {ECHO_ENV} --host 127.0.0.1 --port {{port}}")
    args = ["run", str(tasks), "--agent", "nop", "--provider", "modal", "--concurrency", "4",
            "--workers", "1", "--provider-opt", f"env={json.dumps(env_opt)}"]
    for key, value in options.items():
        args += ["--provider-opt", f"{key}={value}"]
    try:
        rows = _run_and_grep(tmp_path, args, needles,
                             {"HUD_API_KEY": needles["HUD_API_KEY (forwarded)"]})
    finally:
        modal_fake.kill_all()
    by_template = {r["template_id"]: r for r in rows}
    assert len(rows) == 4 and by_template["fine"]["status"] == "ok", rows
    leak = by_template["leak"]
    # The env did quote the key and the URL: the row says so, masked.
    assert leak["status"] == "env_error", leak
    assert "upstream refused key '***' at ***" in leak["error_message"], leak["error_message"]
    assert _manifest_options(tmp_path)["env"] == {"OPENAI_API_KEY": "***", "UPSTREAM_URL": "***"}


@pytest.mark.slow
def test_daytona_env_vars_and_api_key_never_reach_disk(tmp_path):
    pytest.importorskip("daytona")
    from tests.fakes.daytona_api import FakeDaytona, provider_options

    needles = {"env_vars value": f"sk-test-{secrets.token_hex(12)}"}
    tasks = tmp_path / "tasks.jsonl"
    demo = (REPO / "examples" / "demo" / "tasks.jsonl").read_text().splitlines()[:3]
    tasks.write_text("\n".join(demo) + "\n")
    needles["api_key"] = f"dtn-{secrets.token_hex(12)}"
    with FakeDaytona(api_key=needles["api_key"]) as fake:
        options = provider_options(fake, env_vars=json.dumps(
            {"OPENAI_API_KEY": needles["env_vars value"]}))
        args = ["run", str(tasks), "--agent", "rule", "--provider", "daytona",
                "--concurrency", "3", "--workers", "1"]
        for key, value in options.items():
            args += ["--provider-opt", f"{key}={value}"]
        rows = _run_and_grep(tmp_path, args, needles)
    assert [r["status"] for r in rows] == ["ok"] * 3, rows
    saved = _manifest_options(tmp_path)
    assert saved["env_vars"] == {"OPENAI_API_KEY": "***"} and saved["api_key"] == "***"
