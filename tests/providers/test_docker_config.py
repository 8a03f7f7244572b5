"""The docker provider's pure parts: spec → container config (both network modes), options,
owner labels, image directories. No daemon needed: the bridge mode cannot be exercised on
these machines (dockerd --bridge=none), so its config is checked here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from providers import ProviderConfigError, Resources, SandboxSpec, get_provider, imagedir
from providers.docker import owners
from providers.docker.daemon import split_tag
from providers.docker.options import DockerOptions, container_config
from tests.fakes.procs import REPO


def test_host_network_binds_loopback_and_lets_the_server_pick_its_port():
    spec = SandboxSpec(name="hudray-x", env_vars={"A": "1"}, env_name="demo")
    config = container_config(spec, DockerOptions(env={"B": "2"}), "img:t", network="host",
                              port=0, labels={"k": "v"})
    assert config["Cmd"] == ["python3", "-m", "hud_ray.envkit", "env.py", "--host",
                             "127.0.0.1", "--port", "0"]
    assert config["HostConfig"]["NetworkMode"] == "host"
    assert "PortBindings" not in config["HostConfig"]
    assert set(config["Env"]) >= {"A=1", "B=2", "PYTHONUNBUFFERED=1"}
    assert config["Labels"] == {"k": "v"}


def test_bridge_publishes_the_server_port_on_127_0_0_1_only():
    config = container_config(SandboxSpec(name="hudray-x"), DockerOptions(), "img:t",
                              network="bridge", port=8765, labels={})
    assert "--host" in config["Cmd"] and "0.0.0.0" in config["Cmd"]  # inside its own netns
    assert config["ExposedPorts"] == {"8765/tcp": {}}
    assert config["HostConfig"]["PortBindings"] == {
        "8765/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}


def test_resources_and_security_options():
    spec = SandboxSpec(name="hudray-x", resources=Resources(cpu=2, memory_mb=512,
                                                            storage_mb=1000))
    options = DockerOptions(pids_limit=100, privileged=True, cap_add=["SYS_ADMIN"],
                            security_opt=["seccomp=unconfined"], shm_size_mb=64,
                            storage_quota=True)
    host = container_config(spec, options, "i", network="host", port=0, labels={})["HostConfig"]
    assert host["NanoCpus"] == 2_000_000_000 and host["Memory"] == 512 << 20
    assert host["StorageOpt"] == {"size": "1000M"} and host["PidsLimit"] == 100
    assert host["Privileged"] and host["CapAdd"] == ["SYS_ADMIN"]
    assert host["SecurityOpt"] == ["seccomp=unconfined"] and host["ShmSize"] == 64 << 20


@pytest.mark.parametrize("options, named", [
    ({"command": "python3 {nope}"}, "command"),
    ({"command": ""}, "command"),
    ({"workdir": "app"}, "workdir"),
    ({"network": "overlay"}, "network"),
    ({"port": 70000}, "port"),
])
def test_bad_options_are_one_clear_error(options, named):
    with pytest.raises(ProviderConfigError, match=f"provider 'docker': bad option.*{named}"):
        get_provider("docker", **options)


def test_docker_host_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert DockerOptions().docker_host == "tcp://127.0.0.1:2375"
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerOptions().docker_host == "unix:///var/run/docker.sock"


def test_owner_labels_tell_a_live_owner_from_a_dead_or_recycled_one():
    mine = owners.owner_labels()
    assert not owners.owner_is_dead(mine)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert owners.owner_is_dead({**mine, owners.LABEL_PID: str(child.pid)})
    recycled = {**mine, owners.LABEL_PID_START: str(int(mine[owners.LABEL_PID_START]) + 1)}
    assert owners.owner_is_dead(recycled)
    assert not owners.owner_is_dead({**mine, owners.LABEL_HOST: "another-host"})


def test_image_dir_context_holds_the_env_and_envkit_and_its_tag_follows_the_content(tmp_path):
    demo = REPO / "examples" / "demo"
    names = {name for _, name in imagedir.context_files(demo)}
    assert {"Dockerfile.hud", "env.py", ".hud-ray/hud_ray/__init__.py",
            ".hud-ray/hud_ray/envkit/__main__.py"} <= names
    assert imagedir.default_tag(demo).startswith("hudray-local/demo:")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    before = imagedir.default_tag(tmp_path)
    (tmp_path / "env.py").write_text("x = 1\n")
    assert imagedir.default_tag(tmp_path) != before
    assert imagedir.default_tag(tmp_path, {"BASE_IMAGE": "a"}) != imagedir.default_tag(tmp_path)
    staged = imagedir.stage(tmp_path)
    assert (staged / ".hud-ray" / "hud_ray" / "envkit" / "server.py").is_file()
    assert os.path.isfile(staged / "Dockerfile")


def test_split_tag():
    assert split_tag("python:3.11-slim") == ("python", "3.11-slim")
    assert split_tag("localhost:5000/env") == ("localhost:5000/env", "latest")
    assert split_tag("org/env") == ("org/env", "latest")
