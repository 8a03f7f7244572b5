"""The `modal` provider against the loopback fake of the SDK seam (tests/fakes/modal_fake.py).

Each fake sandbox runs the argv the adapter passed — the real gate shipped as `python3 -c`
in front of a real envkit server — so rollouts here cross the same gate, secret and
tunnel.open path as on Modal. Errors are the real `modal.exception` classes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import psutil
import pytest

from hud_ray.agents import resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, iter_tasks
from hud_ray.wire import EnvClient
from providers import (
    LABEL_RUN,
    ProviderConfigError,
    Resources,
    SandboxSpec,
    UnsupportedSpecError,
    get_provider,
    sandbox_name,
)
from providers.gate import SECRET_ENV
from providers.modal import ModalProvider
from tests.fakes import modal_fake
from tests.fakes.procs import DEMO_TASKS, REPO, wait_until


def run(coro):
    return asyncio.run(coro)


def provider(**options) -> ModalProvider:
    return get_provider("modal", **modal_fake.provider_options(**options))


def demo_rollouts() -> dict[str, Rollout]:
    """The first demo task of each template."""
    first: dict[str, Rollout] = {}
    for _, task in iter_tasks(DEMO_TASKS):
        first.setdefault(task.id, Rollout(task=task))
    return first


def calls(name: str) -> list[dict]:
    return [c for c in modal_fake.calls() if c["call"] == name]


def group_alive(pgid: int | None) -> bool:
    if not pgid:
        return False
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


@pytest.fixture(autouse=True)
def _fake_cleanup():
    yield
    modal_fake.kill_all()  # safety net only: each test asserts its own leaks


# --- rollouts ----------------------------------------------------------------------------
def test_rollouts_ok_through_the_gate_and_no_sandbox_left():
    rollouts = demo_rollouts()
    p = provider()
    config = RolloutConfig(run_id="modal-fake", deadline_s=60, heartbeat_s=None)

    async def main():
        agent = resolve_agent("rule")
        return await asyncio.gather(*(run_rollout(r, agent, p, config) for r in rollouts.values()))

    rows = {row.template_id: row for row in run(main())}
    assert {t: r.status for t, r in rows.items()} == {t: Status.OK for t in rollouts}, \
        {t: r.error_message for t, r in rows.items()}
    assert rows["kv_lookup"].reward == 1.0  # the agent's tunnel.open crossed the gate
    assert [s["kind"] for s in rows["kv_lookup"].steps] == ["tunnel"]
    assert rows["riddle"].reward == 0.0
    assert all(r.reward == 1.0 for t, r in rows.items() if t != "riddle")

    # Zero sandboxes afterwards, and their process groups are really gone.
    assert modal_fake.live_sandboxes() == []
    records = modal_fake.all_sandboxes()
    assert len(records) == len(rollouts)
    for rec in records:
        assert rec["returncode"] == 137  # terminated by destroy()
        wait_until(lambda rec=rec: not group_alive(rec["pid"]), 10, f"{rec['sandbox_id']} gone")

    # What Modal was asked for: deterministic names, tags, a timeout from the deadline,
    # the secret delivered as a Modal secret and nowhere else.
    by_name = {rec["name"]: rec for rec in records}
    for key in (r.rollout_key for r in rollouts.values()):
        rec = by_name[sandbox_name("modal-fake", key, 1)]
        assert rec["tags"][LABEL_RUN] == "modal-fake" and rec["tags"]["hud-ray-rollout"] == key
        assert rec["timeout"] == 60 + config.teardown_timeout_s
        # The default transport: an encrypted (TLS) tunnel, nothing in clear.
        assert rec["tls_ports"] == [8765] and rec["ports"] == [] and rec["gate_port"] == 8765
        assert SECRET_ENV in rec["env_keys"]
    # Once per process: one app lookup, one image build, for six concurrent rollouts.
    assert len(calls("App.lookup")) == 1
    assert len(calls("Image.build")) == 1 and len(calls("Image.from_registry")) == 1
    assert len(calls("Image.from_id")) == len(rollouts)


def test_secret_never_in_handle_endpoint_repr_tags_or_state():
    p = provider()

    async def main():
        handle = await p.create(SandboxSpec(name="hudray-secret"), {"owner": "t"})
        endpoint = await p.ready(handle, 20)
        try:
            secret = p._secrets[handle.name]
            assert endpoint.preamble and secret.encode() in endpoint.preamble
            for text in (repr(handle), handle.model_dump_json(), repr(endpoint),
                         endpoint.model_dump_json()):
                assert secret not in text
            state = "".join(f.read_text(errors="replace")
                            for f in modal_fake.state_dir().rglob("*") if f.is_file())
            assert secret not in state  # records, calls, tags, names, sandbox output
        finally:
            await p.destroy(handle)

    run(main())


def test_resources_workdir_env_and_named_secrets_reach_create():
    p = provider(workdir=str(REPO), region="us-east", secrets=["registry-creds"],
                 env={"FROM_OPTION": "1"}, inbound_cidr_allowlist=["127.0.0.1/32"])
    spec = SandboxSpec(name="hudray-res", env_vars={"FROM_TASK": "2"}, lifetime_s=1234.2,
                       resources=Resources(cpu=2, memory_mb=4096,
                                           gpu={"type": "A10G", "count": 2}))

    async def main():
        handle = await p.create(spec, {})
        try:
            endpoint = await p.ready(handle, 20)
            client = await EnvClient.connect(endpoint.url, preamble=endpoint.preamble,
                                             heartbeat_s=None, ready_timeout_s=10)
            await client.bye()
        finally:
            await p.destroy(handle)

    run(main())
    (rec,) = modal_fake.all_sandboxes()
    assert rec["options"] == {"cpu": 2.0, "memory": 4096, "gpu": "A10G:2", "region": "us-east",
                              "inbound_cidr_allowlist": ["127.0.0.1/32"]}
    assert rec["timeout"] == 1235 and rec["workdir"] == str(REPO)
    assert {"FROM_OPTION", "FROM_TASK", SECRET_ENV} <= set(rec["env_keys"])
    assert calls("Secret.from_name")[0]["kwargs"] == ["environment_name"]


@pytest.mark.parametrize("field, value", [("storage_mb", 1000), ("os", "windows")])
def test_resources_modal_cannot_honour_fail_at_check_spec(field, value):
    with pytest.raises(UnsupportedSpecError, match=f"resources.{field}"):
        provider().check_spec(SandboxSpec(name="x", resources=Resources(**{field: value})))
    assert modal_fake.calls() == []


def test_other_plan_time_refusals_name_the_fix():
    with pytest.raises(UnsupportedSpecError, match=r"86400"):
        provider().check_spec(SandboxSpec(name="x", lifetime_s=90_000))
    with pytest.raises(ProviderConfigError, match="image"):
        provider(image=None).check_spec(SandboxSpec(name="x"))
    with pytest.raises(ProviderConfigError, match=SECRET_ENV):
        provider().check_spec(SandboxSpec(name="x", env_vars={SECRET_ENV: "mine"}))
    with pytest.raises(ProviderConfigError, match="argv"):
        provider(command="x" * 70_000).check_spec(SandboxSpec(name="x"))
    assert modal_fake.calls() == []


@pytest.mark.parametrize("options, match", [
    ({"sdk": "no_such_module_xyz:sdk"}, "option sdk="),
    ({"sdk": "tests.fakes.modal_fake:nope"}, "no attribute 'nope'"),
    ({"sdk": "just-a-name"}, "pkg.module:attribute"),
    ({"workdir": "relative/dir"}, "workdir"),
    ({"inner_port": 8765}, "inner_port"),
    ({"env": {"BAD-KEY": "1"}}, "BAD-KEY"),
    ({"env": {SECRET_ENV: "x"}}, "reserved"),
    ({"gpu_count": 1}, "gpu_count"),
])
def test_bad_options_are_one_clear_error(options, match):
    with pytest.raises(ProviderConfigError, match=match):
        p = provider(**options)
        p.sdk  # noqa: B018 - the sdk option is resolved lazily


# --- images ------------------------------------------------------------------------------
@pytest.mark.parametrize("ref, constructor", [
    ("python:3.11-slim", "Image.from_registry"),
    ("modal:my-env:v1", "Image.from_name"),
    ("py:tests.fakes.modal_fake:demo_image", None),
])
def test_image_resolved_once_then_by_id(ref, constructor):
    p = provider(image=ref)

    async def main():
        handles = await asyncio.gather(*(p.create(SandboxSpec(name=f"hudray-img{i}"), {})
                                         for i in range(4)))
        await asyncio.gather(*(p.destroy(h) for h in handles))
        return {rec["image_id"] for rec in modal_fake.all_sandboxes()}

    image_ids = run(main())
    assert len(image_ids) == 1 and next(iter(image_ids)).startswith("im-")
    assert len(calls("Image.build")) == 1
    if constructor:
        assert len(calls(constructor)) == 1
    # An image id is used as-is: no build at all.
    q = provider(image=next(iter(image_ids)))

    async def by_id():
        handle = await q.create(SandboxSpec(name="hudray-byid"), {})
        await q.destroy(handle)

    run(by_id())
    assert len(calls("Image.build")) == 1
    assert modal_fake.live_sandboxes() == []


def test_image_dir_is_built_from_its_dockerfile_once_with_envkit_in_the_context():
    """`image=DIR` (the one image definition): the SDK receives DIR's Dockerfile.hud and a
    context holding the env and `.hud-ray/` (envkit), built once for every rollout."""
    from tests.fakes import modal_fake_state

    p = provider(image=str(REPO / "examples" / "demo"))
    rollout = demo_rollouts()["arith"]

    async def main():
        row = await run_rollout(rollout, resolve_agent("rule"), p, RolloutConfig())
        handles = await asyncio.gather(*(p.create(SandboxSpec(name=f"hudray-dir{i}"), {})
                                         for i in range(3)))
        await asyncio.gather(*(p.destroy(h) for h in handles))
        return row, {rec["image_id"] for rec in modal_fake.all_sandboxes()}

    row, image_ids = run(main())
    assert row.status is Status.OK and row.reward == 1.0
    assert len(calls("Image.from_dockerfile")) == 1 and len(calls("Image.build")) == 1
    [image_id] = image_ids
    built = json.loads(modal_fake_state.path("images", f"{image_id}.json").read_text())
    assert built["kind"] == "dockerfile" and built["dockerfile"] == "Dockerfile.hud"
    assert built["ref"] == (REPO / "examples" / "demo" / "Dockerfile.hud").read_text()
    assert {"env.py", ".hud-ray/hud_ray/__init__.py",
            ".hud-ray/hud_ray/envkit/server.py"} <= set(built["context_files"])
    assert modal_fake.live_sandboxes() == []


# --- destroy, list, reap -------------------------------------------------------------------
def test_destroy_is_idempotent_and_survives_cancellation():
    p = provider()

    async def main():
        h1 = await p.create(SandboxSpec(name="hudray-d1"), {})
        await p.destroy(h1)
        await p.destroy(h1)  # again: no error
        await provider().destroy(h1)  # from another instance, by id: no error
        h2 = await p.create(SandboxSpec(name="hudray-d2"), {})
        task = asyncio.create_task(p.destroy(h2))
        await asyncio.sleep(0)  # let destroy start, then cancel its caller
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return h2

    h2 = run(main())
    (rec,) = [r for r in modal_fake.all_sandboxes() if r["sandbox_id"] == h2.sandbox_id]
    assert rec["returncode"] == 137 and modal_fake.live_sandboxes() == []


REAP_SCRIPT = """
import asyncio, json, sys
from providers import get_provider
p = get_provider("modal", sdk="tests.fakes.modal_fake:sdk", image="x")
labels = {"hud-ray-run": sys.argv[1]}
found = asyncio.run(p.list(labels))
reaped = asyncio.run(p.reap(labels))
print(json.dumps([len(found), sorted(h.sandbox_id for h in reaped)]))
"""


def test_list_and_reap_by_labels_from_another_process():
    p = provider()

    async def main():
        return [await p.create(SandboxSpec(name=f"hudray-l{i}"), {LABEL_RUN: run_id})
                for i, run_id in enumerate(["run-a", "run-a", "run-b"])]

    handles = run(main())
    assert {h.sandbox_id for h in run(p.list({LABEL_RUN: "run-a"}))} == \
        {h.sandbox_id for h in handles[:2]}
    done = subprocess.run([sys.executable, "-c", REAP_SCRIPT, "run-a"], cwd=REPO, env=os.environ,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    count, reaped = json.loads(done.stdout)
    assert count == 2 and reaped == sorted(h.sandbox_id for h in handles[:2])
    assert [r["sandbox_id"] for r in modal_fake.live_sandboxes()] == [handles[2].sandbox_id]
    run(p.destroy(handles[2]))
    assert modal_fake.live_sandboxes() == []


def test_registry_maps_modal_and_the_package_never_shadows_the_sdk():
    import modal

    from providers.modal.sdk import load_sdk
    from providers.registry import provider_class

    assert provider_class("modal") is ModalProvider
    assert load_sdk(None) is modal and hasattr(load_sdk(None), "Sandbox")
    assert isinstance(provider(), ModalProvider)
