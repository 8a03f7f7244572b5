"""The docker provider against the real Docker daemon (no fakes): lifecycle, labels, bad
inputs. Skipped, with the reason, only when no daemon answers; CI starts one
(shared/tools/setup-docker.sh, called by .ci/run)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest

from hud_ray.wire import EnvClient
from providers import (
    LABEL_OWNER,
    LABEL_ROLLOUT,
    LABEL_RUN,
    EnvStartError,
    NotReadyError,
    ProviderConfigError,
    Resources,
    SandboxSpec,
    UnsupportedSpecError,
    get_provider,
    imagedir,
)
from providers.base import GpuSpec
from providers.docker import owners
from tests.fakes.docker_daemon import (
    BASE_IMAGE,
    REPO,
    containers,
    demo_image,
    faulty_envs_image,
    remove_all,
    require_daemon,
)
from tests.fakes.procs import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def image() -> str:
    return demo_image()


@pytest.fixture
def run_id():
    run = f"dk-{uuid.uuid4().hex[:8]}"
    yield run
    remove_all({LABEL_RUN: run})  # belt and braces: a failed test leaves nothing running


def _labels(run_id: str, key: str = "t#0") -> dict[str, str]:
    return {LABEL_RUN: run_id, LABEL_ROLLOUT: key, LABEL_OWNER: "hud-ray"}


def _spec(**kw) -> SandboxSpec:
    return SandboxSpec(name=f"hudray-{uuid.uuid4().hex[:12]}", **kw)


def test_lifecycle_labels_hello_and_idempotent_destroy(image, run_id):
    provider = get_provider("docker", image=image)
    provider.check_config()

    async def main():
        spec = _spec()
        handle = await provider.create(spec, _labels(run_id))
        endpoint = await provider.ready(handle, 30)
        client = await EnvClient.connect(endpoint.url, ready_timeout_s=5, call_timeout_s=5)
        started = await client.start("arith", {"a": 2, "b": 3, "op": "+"})
        assert "2 + 3" in str(started["prompt"])
        assert (await client.grade("5"))["score"] == 1.0
        await client.bye()
        [listed] = await provider.list({LABEL_RUN: run_id})
        assert listed.sandbox_id == handle.sandbox_id and listed.name == spec.name
        assert listed.labels[LABEL_ROLLOUT] == "t#0"
        assert listed.labels[owners.LABEL_PID] == str(__import__("os").getpid())
        await provider.destroy(handle)
        await provider.destroy(handle)  # idempotent: already gone is fine
        assert await provider.list({LABEL_RUN: run_id}) == []
        await provider.close()

    asyncio.run(main())
    assert containers({LABEL_RUN: run_id}) == []


def test_resources_reach_the_container(image, run_id):
    provider = get_provider("docker", image=image, pids_limit=64)
    spec = _spec(resources=Resources(cpu=0.5, memory_mb=256))

    async def main():
        handle = await provider.create(spec, _labels(run_id))
        info = await provider.client.inspect(handle.sandbox_id)
        await provider.close()  # removes what it still owns
        return info["HostConfig"]

    host = asyncio.run(main())
    assert (host["NanoCpus"], host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (
        500_000_000, 256 << 20, 256 << 20, 64)
    assert host["NetworkMode"] == "host"
    assert containers({LABEL_RUN: run_id}) == []


def _fails_ready(provider, spec, run_id, timeout_s=30.0, error=EnvStartError) -> str:
    """The message `ready` fails with: EnvStartError (env_error, never retried) when the
    env itself exits or never serves, NotReadyError (infra_error, retried) when it is
    killed from outside."""
    async def main():
        handle = await provider.create(spec, _labels(run_id))
        try:
            with pytest.raises(error) as err:
                await provider.ready(handle, timeout_s)
            return str(err.value)
        finally:
            await provider.destroy(handle)
            await provider.close()

    return asyncio.run(main())


def test_exit_before_ready_names_the_code_and_last_output(image, run_id):
    command = "python3 -c \"import sys; print('cannot open the db', flush=True); sys.exit(3)\""
    message = _fails_ready(get_provider("docker", image=image, command=command), _spec(), run_id)
    assert "exited with code 3 before" in message and "cannot open the db" in message


def test_server_that_never_says_hello_fails_within_the_budget(image, run_id):
    # Accepts connections, prints a port, answers nothing.
    command = ("python3 -c \"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
               "s.listen(); print('HUD_SERVE_PORT=%d' % s.getsockname()[1], flush=True); "
               "time.sleep(120)\"")
    provider = get_provider("docker", image=image, command=command)
    message = _fails_ready(provider, _spec(), run_id, timeout_s=3.0)
    assert "never answered hello within 3.0s" in message


def test_oom_is_named_with_exit_137(image, run_id):
    command = "python3 -c \"x = bytearray(400 * 1024 * 1024); print('allocated')\""
    provider = get_provider("docker", image=image, command=command)
    message = _fails_ready(provider, _spec(resources=Resources(memory_mb=48)), run_id,
                           error=NotReadyError)
    assert "OOM-killed (exit 137)" in message, message


def test_port_clash_is_named(image, run_id):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        message = _fails_ready(get_provider("docker", image=image, port=port), _spec(), run_id)
    finally:
        holder.close()
    assert f"port clash: 127.0.0.1:{port} is already in use" in message, message


def test_an_env_that_fails_to_load_shows_its_error(tmp_path, run_id):
    tag = faulty_envs_image(tmp_path)
    command = "python3 -m hud_ray.envkit import_error.py --host {host} --port {port}"
    message = _fails_ready(get_provider("docker", image=tag, command=command), _spec(), run_id)
    assert "exited with code 2" in message and "envkit: cannot load" in message, message
    assert message.startswith("env server failed to start: cannot load /app/import_error.py:4: "
                              "RuntimeError: license server unreachable"), message


# --- plan time: one clear error, before any container exists -----------------------------
def test_unreachable_daemon_is_one_error_naming_docker_host():
    provider = get_provider("docker", image="x:y", docker_host="unix:///nonexistent/docker.sock")
    with pytest.raises(ProviderConfigError) as err:
        provider.check_config()
    assert "no Docker daemon answers at unix:///nonexistent/docker.sock" in str(err.value)
    assert "DOCKER_HOST" in str(err.value)


def test_missing_image_is_refused_at_plan_time():
    require_daemon()
    for pull in ("never", "missing"):  # no registry here: the pull fails, and says why
        provider = get_provider("docker", image="hudray-missing:nope", pull=pull)
        with pytest.raises(ProviderConfigError) as err:
            provider.check_config()
        assert "image 'hudray-missing:nope' is not on the daemon" in str(err.value)
        assert "hud-ray image build" in str(err.value)


def test_specs_the_daemon_cannot_honour_are_refused(image):
    provider = get_provider("docker", image=image)
    with pytest.raises(UnsupportedSpecError, match="no GPU runtime"):
        provider.check_spec(_spec(resources=Resources(gpu=GpuSpec(count=1))))
    with pytest.raises(UnsupportedSpecError, match="storage_quota=true"):
        provider.check_spec(_spec(resources=Resources(storage_mb=1024)))
    with pytest.raises(ProviderConfigError, match="no image"):
        get_provider("docker").check_spec(_spec())
    with pytest.raises(ProviderConfigError, match="did you mean 'network'"):
        get_provider("docker", netwrok="host")


# --- leftovers -------------------------------------------------------------------------
def test_a_leftover_with_the_same_name_is_replaced(image, run_id):
    spec = _spec()

    async def main():
        first = get_provider("docker", image=image)
        old = await first.create(spec, _labels(run_id))
        second = get_provider("docker", image=image)
        new = await second.create(spec, _labels(run_id))  # a retried create, same name
        await second.ready(new, 30)
        ids = [c["Id"] for c in containers({LABEL_RUN: run_id})]
        await second.close()
        await first.close()  # its container is gone already: nothing to remove, no error
        return old.sandbox_id, new.sandbox_id, ids

    old_id, new_id, ids = asyncio.run(main())
    assert old_id != new_id and ids == [new_id]


CRASHING_OWNER = textwrap.dedent("""
    import asyncio, os, sys
    from providers import SandboxSpec, LABEL_RUN, get_provider

    async def main():
        provider = get_provider("docker", image=sys.argv[1])
        handle = await provider.create(SandboxSpec(name=sys.argv[2]), {LABEL_RUN: sys.argv[3]})
        await provider.ready(handle, 30)
        os._exit(9)  # the owner dies without any cleanup

    asyncio.run(main())
""")


def test_the_first_create_sweeps_containers_of_dead_owners(image, run_id):
    from providers.docker import provider as docker_provider

    done = subprocess.run([sys.executable, "-c", CRASHING_OWNER, image, f"hudray-orphan-{run_id}",
                           run_id], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 9, done.stderr
    [orphan] = containers({LABEL_RUN: run_id})
    assert owners.owner_is_dead(orphan["Labels"])
    docker_provider._DEAD_OWNERS_REAPED.clear()  # as in a fresh process

    async def main():
        provider = get_provider("docker", image=image)
        handle = await provider.create(_spec(), _labels(f"{run_id}-new"))
        await provider.destroy(handle)
        await provider.close()  # waits for the sweep it started

    asyncio.run(main())
    wait_until(lambda: containers({LABEL_RUN: run_id}) == [], 10, "the orphan to be removed")


def test_an_image_directory_is_built_once_at_plan_time_and_runs(run_id):
    require_daemon()
    demo = str(REPO / "examples" / "demo")
    provider = get_provider("docker", image=demo, build_args={"BASE_IMAGE": BASE_IMAGE})
    provider.check_config()  # builds hudray-local/demo:<content hash> unless already there
    tag = imagedir.default_tag(demo, {"BASE_IMAGE": BASE_IMAGE})
    assert tag.startswith("hudray-local/demo:") and require_daemon().has_image(tag)

    async def main():
        handle = await provider.create(_spec(), _labels(run_id))
        endpoint = await provider.ready(handle, 30)
        await provider.close()
        return handle, endpoint

    handle, endpoint = asyncio.run(main())
    assert handle.data["image"] == tag and endpoint.url.startswith("tcp://127.0.0.1:")
    assert containers({LABEL_RUN: run_id}) == []


def test_a_task_image_missing_from_the_daemon_is_refused_at_plan_time():
    require_daemon()
    provider = get_provider("docker", pull="never")
    with pytest.raises(ProviderConfigError, match="'hudray-missing:task' is not on the daemon"):
        provider.check_spec(_spec(image="hudray-missing:task"))


def test_destroy_finishes_even_when_its_caller_is_cancelled(image, run_id):
    provider = get_provider("docker", image=image)

    async def main():
        handle = await provider.create(_spec(), _labels(run_id))
        destroying = asyncio.ensure_future(provider.destroy(handle))
        await asyncio.sleep(0)  # let the removal start, then cancel its caller
        destroying.cancel()
        with pytest.raises(asyncio.CancelledError):
            await destroying  # re-raised only once the shielded removal has finished
        left = containers({LABEL_RUN: run_id})
        await provider.client.close()  # not provider.close(): it would remove leftovers itself
        return left

    assert asyncio.run(main()) == []
