"""Bad inputs of the docker provider through the real command line: one `hud-ray: error:`
line naming the thing, exit 2, Ray never started (the guard of test_bad_inputs_cli)."""

from __future__ import annotations

import pytest

from tests.fakes.docker_daemon import BASE_IMAGE, require_daemon
from tests.test_bad_inputs_cli import DEMO_TASKS, REPO, assert_one_error, cli_env, hud_ray


def _run(tmp_path, *opts: str, env=None):
    args = ["run", str(DEMO_TASKS), "--agent", "rule", "--provider", "docker"]
    for opt in opts:
        args += ["--provider-opt", opt]
    return hud_ray(*args, "--out", str(tmp_path / "runs"), cwd=tmp_path, env=env)


def test_unreachable_daemon_names_docker_host(tmp_path):
    done = _run(tmp_path, "image=hudray-demo:t",
                env=cli_env(DOCKER_HOST="unix:///nonexistent/docker.sock"))
    assert_one_error(done, "provider 'docker'", "unix:///nonexistent/docker.sock", "DOCKER_HOST")
    assert not (tmp_path / "runs").exists()


def test_missing_image_names_it_and_how_to_build_it(tmp_path):
    require_daemon()
    done = _run(tmp_path, "image=hudray-missing:nope", "pull=never")
    assert_one_error(done, "image 'hudray-missing:nope' is not on the daemon",
                     "hud-ray image build")


def test_no_image_at_all(tmp_path):
    require_daemon()
    assert_one_error(_run(tmp_path), "provider 'docker': no image", "--provider-opt image=")


def test_misspelt_option(tmp_path):
    assert_one_error(_run(tmp_path, "imgae=x"), "imgae", "did you mean 'image'")


@pytest.mark.parametrize("args, named", [
    (("image", "build", "nowhere"), ("image directory 'nowhere' not found",)),
    (("image", "build", "tests"), ("image directory 'tests' has no Dockerfile.hud or Dockerfile",)),
])
def test_image_build_bad_directory(args, named):
    assert_one_error(hud_ray(*args, cwd=REPO), *named)


def test_image_build_failure_names_the_step(tmp_path):
    require_daemon()
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN exit 7\n")
    done = hud_ray("image", "build", str(tmp_path), "--tag", "hudray-broken:t", cwd=REPO)
    assert done.code == 2
    assert "docker build of 'hudray-broken:t' failed" in done.stderr
    assert "returned a non-zero code: 7" in done.stderr


def test_reap_of_every_provider_skips_an_unreachable_daemon(tmp_path):
    done = hud_ray("reap", "--dry-run", cwd=tmp_path,
                   env=cli_env(DOCKER_HOST="unix:///nonexistent/docker.sock"))
    assert done.code == 0, done.stderr
    assert "docker: skipped" in done.stderr and "would destroy 0 sandbox(es)" in done.stdout


def test_reap_of_docker_alone_with_an_unreachable_daemon_is_one_error(tmp_path):
    done = hud_ray("reap", "--provider", "docker", cwd=tmp_path,
                   env=cli_env(DOCKER_HOST="unix:///nonexistent/docker.sock"))
    assert_one_error(done, "provider 'docker'", "DOCKER_HOST")
