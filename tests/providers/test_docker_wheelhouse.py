"""Offline wheelhouses for env images (providers/docker/wheelhouse.py) and an image's own
server command (label hud-ray.command). Tags and directory rules need nothing; the rest runs
on the real daemon (skipped only when none answers) with pip itself, kept off any registry
(PIP_NO_INDEX, wheels made here)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from providers import ProviderConfigError
from providers.docker import images, wheelhouse
from providers.docker.wheelhouse import PythonTarget
from tests.fakes.docker_daemon import BASE_IMAGE, containers, require_daemon

REPO = Path(__file__).resolve().parents[2]
TARGET = PythonTarget(impl="cpython", version="3.11", glibc="glibc 2.36", machine="x86_64")
WHEELHOUSE_DOCKERFILE = ("ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n"
                         "COPY wheelhouse/ /tmp/wheelhouse/\n")


def test_platforms_cover_every_manylinux_the_glibc_runs():
    tags = TARGET.platforms()
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux_2_16_x86_64" not in tags
    assert tags[-4:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
                         "linux_x86_64"]
    musl = PythonTarget(impl="cpython", version="3.12", glibc="", machine="aarch64")
    assert musl.platforms() == ["linux_aarch64"]
    args = TARGET.pip_args()
    assert args[:4] == ["--only-binary=:all:", "--python-version", "3.11", "--implementation"]
    assert "cp311" in args and "abi3" in args


def test_a_directory_asks_for_a_wheelhouse_with_requirements_and_a_copy(tmp_path):
    assert not wheelhouse.wanted(REPO / "examples" / "demo")  # envkit: nothing to install
    assert wheelhouse.wanted(REPO / "tests" / "fakes" / "hud_envs" / "tools")
    (tmp_path / "Dockerfile").write_text(WHEELHOUSE_DOCKERFILE)
    assert not wheelhouse.wanted(tmp_path)  # no requirements.txt
    (tmp_path / "requirements.txt").write_text("hud==0.6.21\n")
    assert wheelhouse.wanted(tmp_path)


def test_base_image_from_build_args_else_the_arg_default(tmp_path):
    (tmp_path / "Dockerfile.hud").write_text(WHEELHOUSE_DOCKERFILE)
    assert wheelhouse.base_image(tmp_path, {}) == "python:3.11-slim"
    assert wheelhouse.base_image(tmp_path, {"BASE_IMAGE": BASE_IMAGE}) == BASE_IMAGE
    (tmp_path / "Dockerfile.hud").write_text("ARG BASE_IMAGE\nFROM $BASE_IMAGE\n")
    with pytest.raises(ProviderConfigError, match=r"Dockerfile.hud: FROM \$BASE_IMAGE names "
                       "no image"):
        wheelhouse.base_image(tmp_path, {})


def test_the_base_images_python_is_read_by_running_it():
    target = wheelhouse.probe(require_daemon(), BASE_IMAGE)
    assert (target.impl, target.version, target.machine) == ("cpython", "3.11", "x86_64")
    assert target.glibc.startswith("glibc 2.")


def test_a_base_image_the_daemon_lacks_is_named():
    with pytest.raises(ProviderConfigError, match=r"base image 'hudray-nope:t' is not on"):
        wheelhouse.probe(require_daemon(), "hudray-nope:t")


def test_a_base_image_that_cannot_run_the_probe_is_named_and_leaves_no_container():
    daemon = require_daemon()
    with pytest.raises(ProviderConfigError, match=r"base image 'local/python-base:latest': "
                       r"cannot run nosuchbinary-x: .*executable file not found"):
        wheelhouse._run_once(daemon, BASE_IMAGE, ["nosuchbinary-x"])
    assert containers({"hud-ray.purpose": "wheelhouse-probe"}) == []


def _wheel(links: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (metadata and record only)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text)}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = links / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def offline_pip(tmp_path, monkeypatch) -> Path:
    """pip download reads only wheels made here: no registry is asked."""
    links = tmp_path / "links"
    links.mkdir()
    _wheel(links, "hudraytiny", "1.0")
    _wheel(links, "hudraytiny", "2.0")
    _wheel(links, "pip", "0.0.1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_ensure_fills_skips_and_refills_the_wheelhouse(tmp_path, offline_pip):
    daemon = require_daemon()
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "Dockerfile.hud").write_text(WHEELHOUSE_DOCKERFILE)
    (env_dir / "requirements.txt").write_text("hudraytiny==1.0\n")
    lines: list[str] = []
    house = wheelhouse.ensure(daemon, env_dir, {"BASE_IMAGE": BASE_IMAGE}, lines.append)
    assert house == env_dir / "wheelhouse"
    assert sorted(p.name for p in house.glob("*.whl")) == [
        "hudraytiny-1.0-py3-none-any.whl", "pip-0.0.1-py3-none-any.whl"]
    assert json.loads((house / wheelhouse.STAMP).read_text())["target"]["version"] == "3.11"
    # Unchanged: pip is not run again (its wheels could not be fetched now anyway).
    (offline_pip / "hudraytiny-1.0-py3-none-any.whl").unlink()
    wheelhouse.ensure(daemon, env_dir, {"BASE_IMAGE": BASE_IMAGE}, lines.append)
    assert "is up to date" in lines[-1]
    # Changed requirements: the old wheels go, the new ones come.
    (env_dir / "requirements.txt").write_text("hudraytiny==2.0\n")
    wheelhouse.ensure(daemon, env_dir, {"BASE_IMAGE": BASE_IMAGE}, lines.append)
    assert sorted(p.name for p in house.glob("hudraytiny-*.whl")) == [
        "hudraytiny-2.0-py3-none-any.whl"]


def test_a_failed_download_is_one_error_and_leaves_no_stamp(tmp_path, offline_pip):
    daemon = require_daemon()
    (tmp_path / "Dockerfile.hud").write_text(WHEELHOUSE_DOCKERFILE)
    (tmp_path / "requirements.txt").write_text("hudraytiny==9.9\n")
    with pytest.raises(ProviderConfigError) as caught:
        wheelhouse.ensure(daemon, tmp_path, {"BASE_IMAGE": BASE_IMAGE}, lambda line: None)
    message = str(caught.value)
    assert "\n" not in message
    assert f"pip download of {tmp_path / 'requirements.txt'} for cpython 3.11" in message
    assert "hudraytiny==9.9" in message  # pip's own error line names the requirement
    assert not (tmp_path / "wheelhouse").exists()


def test_image_build_through_the_cli_names_a_bad_requirement(tmp_path, offline_pip):
    require_daemon()
    (tmp_path / "Dockerfile.hud").write_text(WHEELHOUSE_DOCKERFILE)
    (tmp_path / "requirements.txt").write_text("hudraytiny==9.9\n")
    done = subprocess.run([sys.executable, "-m", "hud_ray.cli", "image", "build", str(tmp_path),
                           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("hud-ray: error:")]
    assert len(errors) == 1 and "requirements.txt" in errors[0] and "9.9" in errors[0], done.stderr


def _labelled_image(tmp_path: Path, tag: str, command: str) -> str:
    daemon = require_daemon()
    tmp_path.mkdir()
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nLABEL hud-ray.command=\"{command}\"\n")
    images.build(daemon, str(tmp_path), tag, {}, lambda line: None)
    return tag


def test_an_images_command_label_is_read_and_a_broken_one_named(tmp_path):
    daemon = require_daemon()
    good = _labelled_image(tmp_path / "a", "hudray-label-good:t",
                           "python3 -m srv --host {host} --port {port}")
    bad = _labelled_image(tmp_path / "b", "hudray-label-bad:t", "python3 {nope}")
    try:
        assert images.command_label(daemon, good) == "python3 -m srv --host {host} --port {port}"
        assert images.command_label(daemon, BASE_IMAGE) is None
        with pytest.raises(ProviderConfigError, match=r"image 'hudray-label-bad:t': label "
                           r"hud-ray.command 'python3 \{nope\}'"):
            images.command_label(daemon, bad)
        # Through the user's path: one error line at plan time, no run directory.
        done = subprocess.run([sys.executable, "-m", "hud_ray.cli", "run",
                               str(REPO / "examples" / "demo" / "tasks.jsonl"), "--agent", "rule",
                               "--provider", "docker", "--provider-opt", f"image={bad}",
                               "--out", str(tmp_path / "runs"), "--no-progress"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        assert done.returncode != 0
        assert done.stderr.strip().splitlines() == [
            "hud-ray: error: provider 'docker': image 'hudray-label-bad:t': label hud-ray.command "
            "'python3 {nope}': KeyError('nope'); placeholders are {host} {port} {env_name}"]
        assert not (tmp_path / "runs").exists()
    finally:
        for tag in (good, bad):
            daemon.request("DELETE", f"/images/{tag}?force=1")
