"""providers.local: real env-server subprocesses, an on-disk ledger, reap after a crash."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from hud_ray.wire import EnvClient
from providers import (
    LABEL_ROLLOUT,
    LABEL_RUN,
    ProviderConfigError,
    SandboxSpec,
    get_provider,
    sandbox_name,
)
from providers.local import LocalProvider

from ..fakes.procs import DEMO_ENV, ENVS, REPO, alive, async_wait_until, wait_gone


def spec(key: str = "r#0", env_name: str | None = None) -> SandboxSpec:
    return SandboxSpec(name=sandbox_name("run", key, 1), env_name=env_name)


def labels(run: str, rollout: str = "r#0") -> dict[str, str]:
    return {LABEL_RUN: run, LABEL_ROLLOUT: rollout}


async def hello(url: str) -> str:
    client = await EnvClient.connect(url, ready_timeout_s=10, heartbeat_s=None)
    name = client.env_info["name"]
    await client.bye()
    return name


def test_create_ready_destroy_and_the_ledger(tmp_path):
    provider = LocalProvider(env_file=str(DEMO_ENV), state_dir=str(tmp_path))

    async def main():
        handle = await provider.create(spec(), labels("a"))
        pid = handle.data["pid"]
        assert json.loads((tmp_path / f"{handle.sandbox_id}.json").read_text())["data"]["pid"] == pid
        endpoint = await provider.ready(handle, 20)
        assert await hello(endpoint.url) == "demo"
        assert provider.alive_pids() == [pid]
        await provider.destroy(handle)
        await provider.destroy(handle)  # idempotent
        return pid

    pid = asyncio.run(main())
    wait_gone([pid])
    assert not list(tmp_path.glob("*.json"))


def test_create_with_the_same_name_finds_the_sandbox_instead_of_orphaning_it(tmp_path):
    provider = LocalProvider(env_file=str(DEMO_ENV), state_dir=str(tmp_path))

    async def main():
        first = await provider.create(spec(), labels("a"))
        again = await provider.create(spec(), labels("a"))  # a retried create
        assert again.data["pid"] == first.data["pid"] and len(provider.alive_pids()) == 1
        await provider.close()
        return first.data["pid"]

    wait_gone([asyncio.run(main())])
    assert not list(tmp_path.glob("*.json"))


def test_list_filters_by_every_given_label(tmp_path):
    provider = LocalProvider(env_file=str(DEMO_ENV), state_dir=str(tmp_path))

    async def main():
        made = [await provider.create(spec(f"{run}/{k}"), labels(run, k))
                for run, k in (("a", "x#0"), ("a", "y#0"), ("b", "x#0"))]
        ids = lambda found: sorted(h.sandbox_id for h in found)  # noqa: E731
        assert ids(await provider.list({})) == ids(made)
        assert ids(await provider.list({LABEL_RUN: "a"})) == ids(made[:2])
        assert ids(await provider.list(labels("a", "y#0"))) == ids(made[1:2])
        assert await provider.list({LABEL_RUN: "c"}) == []
        await provider.destroy(made[0])
        assert ids(await provider.list({LABEL_RUN: "a"})) == ids(made[1:2])
        await provider.close()
        assert provider.alive_pids() == []
        return [h.data["pid"] for h in made]

    wait_gone(asyncio.run(main()))


def test_reap_kills_what_a_dropped_provider_instance_left_behind(tmp_path):
    async def main():
        owner = LocalProvider(env_file=str(DEMO_ENV), state_dir=str(tmp_path))
        kept = await owner.create(spec("keep#0"), labels("other-run", "keep#0"))
        handle = await owner.create(spec(), labels("crashed-run"))
        await owner.ready(handle, 20)
        del owner  # no destroy, no close: as if its worker had died

        reaper = LocalProvider(state_dir=str(tmp_path), command="{python} -c pass")
        found = await reaper.list({LABEL_RUN: "crashed-run"})
        assert [h.sandbox_id for h in found] == [handle.sandbox_id]
        reaped = await reaper.reap({LABEL_RUN: "crashed-run"})
        assert [h.sandbox_id for h in reaped] == [handle.sandbox_id]
        # keep the loop running until the kill is seen (lets the dropped pipes close)
        pid, kept_pid = handle.data["pid"], kept.data["pid"]
        await async_wait_until(lambda: not alive(pid), 10, f"reaped env {pid} to exit")
        assert alive(kept_pid), "reap touched a sandbox with other labels"
        os.killpg(kept_pid, signal.SIGKILL)
        await async_wait_until(lambda: not alive(kept_pid), 10, f"env {kept_pid} to exit")

    asyncio.run(main())


CRASHING_OWNER = textwrap.dedent("""
    import asyncio, os, sys
    from providers import SandboxSpec, LABEL_RUN
    from providers.local import LocalProvider

    async def main():
        provider = LocalProvider(env_file=sys.argv[1], state_dir=sys.argv[2])
        handle = await provider.create(SandboxSpec(name="hudray-crashed"), {LABEL_RUN: "doomed"})
        await provider.ready(handle, 20)
        print(handle.data["pid"], flush=True)
        os._exit(9)  # the owner dies without any cleanup

    asyncio.run(main())
""")


def test_reap_kills_what_a_crashed_owner_process_left_behind(tmp_path):
    done = subprocess.run([sys.executable, "-c", CRASHING_OWNER, str(DEMO_ENV), str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 9, done.stderr
    orphan = int(done.stdout.strip())
    assert alive(orphan), "the env server should outlive its crashed owner"

    reaper = LocalProvider(state_dir=str(tmp_path), command="{python} -c pass")
    reaped = asyncio.run(reaper.reap({LABEL_RUN: "doomed"}))
    assert [h.data["pid"] for h in reaped] == [orphan]
    wait_gone([orphan])
    assert not list(tmp_path.glob("*.json"))


def test_reap_never_kills_a_recycled_pid_and_forgets_dead_entries(tmp_path):
    # A ledger entry whose PID now belongs to an unrelated process (other start time).
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = psutil.Process(stranger.pid).create_time()
        entry = {"provider": "local", "sandbox_id": "hudray-recycled", "name": "hudray-recycled",
                 "labels": {LABEL_RUN: "old"},
                 "data": {"pid": stranger.pid, "pgid": stranger.pid, "started": started - 500}}
        (tmp_path / "hudray-recycled.json").write_text(json.dumps(entry))
        dead = {**entry, "sandbox_id": "hudray-dead",
                "data": {"pid": 2**22 + 7, "pgid": 2**22 + 7, "started": 1.0}}
        (tmp_path / "hudray-dead.json").write_text(json.dumps(dead))

        reaper = LocalProvider(state_dir=str(tmp_path), command="{python} -c pass")
        assert asyncio.run(reaper.reap({LABEL_RUN: "old"})) == []
        assert stranger.poll() is None, "reap killed a process that was never ours"
        assert not list(tmp_path.glob("*.json"))  # nothing of ours is alive: forget both
    finally:
        stranger.kill()
        stranger.wait()


def test_custom_command_runs_through_a_shell_and_the_whole_group_dies(tmp_path):
    command = "sh -c '{python} -m hud_ray.envkit {env_file} --port 0 --env {env_name}; echo done'"
    provider = LocalProvider(env_file=str(ENVS / "two_envs.py"), command=command,
                             state_dir=str(tmp_path))

    async def main():
        handle = await provider.create(spec(env_name="beta"), labels("a"))
        endpoint = await provider.ready(handle, 20)
        assert await hello(endpoint.url) == "beta"
        shell = psutil.Process(handle.data["pid"])
        assert shell.name() == "sh"
        children = [c.pid for c in shell.children(recursive=True)]
        assert children, "sh should have forked the env server"
        await provider.destroy(handle)
        return [shell.pid, *children]

    wait_gone(asyncio.run(main()))


def test_diagnostics_keep_the_last_output_lines(tmp_path):
    command = ("{python} -c \"import sys; [print('line', i) for i in range(100)]; "
               "print('HUD_SERVE_PORT=1', flush=True); import time; time.sleep(60)\"")
    provider = LocalProvider(command=command, state_dir=str(tmp_path), output_lines=5)

    async def main():
        handle = await provider.create(spec(), labels("a"))
        await provider.ready(handle, 20)
        tail = await provider.diagnostics(handle)
        await provider.close()
        return handle.data["pid"], tail

    pid, tail = asyncio.run(main())
    assert tail.splitlines() == ["line 96", "line 97", "line 98", "line 99", "HUD_SERVE_PORT=1"]
    wait_gone([pid])


# --- configuration errors: one clear ProviderConfigError each -------------------------------


def test_missing_env_file_option_is_named(tmp_path):
    provider = LocalProvider(state_dir=str(tmp_path))  # constructing is fine (e.g. to reap)
    with pytest.raises(ProviderConfigError, match="env_file"):
        provider.check_config()
    with pytest.raises(ProviderConfigError, match="env_file"):
        asyncio.run(provider.create(spec(), labels("a")))
    assert not list(tmp_path.glob("*.json"))


def test_env_file_that_does_not_exist_is_named(tmp_path):
    provider = LocalProvider(env_file=str(tmp_path / "nope.py"), state_dir=str(tmp_path))
    with pytest.raises(ProviderConfigError, match=r"env_file .*nope\.py"):
        asyncio.run(provider.create(spec(), labels("a")))


@pytest.mark.parametrize("options, named", [
    ({"bogus": 1}, "bogus"),
    ({"kill_grace_s": "soon"}, "kill_grace_s"),
    ({"output_lines": [1]}, "output_lines"),
])
def test_bad_option_is_named(options, named):
    with pytest.raises(ProviderConfigError, match=rf"provider 'local'.*{named}"):
        LocalProvider(env_file=str(DEMO_ENV), **options)
    with pytest.raises(ProviderConfigError, match=named):
        get_provider("local", env_file=str(DEMO_ENV), **options)


@pytest.mark.parametrize("options, named", [
    ({"command": "{pyhton} -m hud_ray.envkit {env_file}"}, "option command"),
    ({"command": "   "}, "option command"),
    ({"command": "/no/such/server {env_file}"}, "option command: cannot run '/no/such/server'"),
    ({"cwd": "/no/such/dir"}, "option cwd: '/no/such/dir'"),
])
def test_unusable_command_or_cwd_is_a_config_error_not_a_retry(tmp_path, options, named):
    provider = LocalProvider(env_file=str(DEMO_ENV), state_dir=str(tmp_path), **options)
    with pytest.raises(ProviderConfigError, match=named):
        asyncio.run(provider.create(spec(), labels("a")))
    assert not list(tmp_path.glob("*.json"))


def test_unknown_provider_name_lists_the_known_ones():
    with pytest.raises(ProviderConfigError, match=r"unknown provider 'locale'.*local"):
        get_provider("locale")


def test_state_dir_defaults_to_hud_ray_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HUD_RAY_STATE_DIR", str(tmp_path / "state"))
    provider = LocalProvider(env_file=str(DEMO_ENV))
    assert provider.state_dir == Path(tmp_path / "state" / "local")
