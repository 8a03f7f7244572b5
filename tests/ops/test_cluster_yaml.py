"""cluster.yaml and deploy/kuberay.yaml, checked offline.

cluster.yaml goes through `validate_config(prepare_config(cfg))` from the installed ray
wheel — what `ray up` runs before its first cloud call — plus hud-ray's own rules
(tests/ops/conftest.py). A subprocess with an audit hook proves that check makes no
network call and spawns nothing. Broken copies must fail, each naming what is wrong.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from .conftest import (
    CLUSTER_YAML,
    CREDENTIAL_NAME,
    KUBERAY_YAML,
    ClusterConfigError,
    check_cluster_config,
)

WORKER_TYPES = ("rollout", "rollout_spot")


def test_cluster_yaml_passes_rays_own_validation(cluster_config, ray_version):
    prepared = check_cluster_config(cluster_config, ray_version)
    nodes = prepared["available_node_types"]
    head = nodes[prepared["head_node_type"]]
    # The head runs the driver only: no CPU tasks, no rollout workers.
    assert head["resources"] == {"CPU": 0, "sandbox_slots": 0}
    assert head["max_workers"] == 0  # filled in by prepare_config
    for name in WORKER_TYPES:
        assert nodes[name]["resources"]["sandbox_slots"] == 256
        assert nodes[name]["node_config"]["InstanceType"] == "m7i.2xlarge"
    assert nodes["rollout_spot"]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert sum(n["max_workers"] for n in nodes.values()) <= prepared["max_workers"]
    assert prepared["idle_timeout_minutes"] == 10
    # Our setup replaced Ray's AWS defaults (a nightly wheel) instead of adding to them.
    assert not any("ray-wheels" in c for c in prepared["head_setup_commands"])
    assert any("boto3" in c for c in prepared["head_setup_commands"])  # the autoscaler needs it
    assert any('"hud-ray[modal,daytona,hud]"' in c for c in prepared["worker_setup_commands"])


def test_prepare_and_validate_make_no_network_call_and_spawn_nothing():
    """An audit hook refuses sockets, DNS and subprocesses for the whole check; the same
    hook must catch a deliberate DNS lookup afterwards (so it was really armed)."""
    script = textwrap.dedent(f"""
        import json, sys
        seen = []
        def hook(event, args):
            if event == "socket.__new__" or (
                    event == "socket.bind" and args[1][0] in ("::1", "127.0.0.1")):
                return  # urllib3 probes IPv6 at import by binding ::1: local, not network
            if event.startswith(("socket.", "subprocess.", "os.exec", "os.posix_spawn",
                                 "os.system", "urllib.")):
                seen.append(event)
                raise RuntimeError("blocked " + event)
        sys.addaudithook(hook)
        import yaml
        from ray.autoscaler._private.util import prepare_config, validate_config
        validate_config(prepare_config(yaml.safe_load(open({str(CLUSTER_YAML)!r}))))
        during = list(seen)
        aws = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore"))
        import socket
        try:
            socket.getaddrinfo("ec2.us-west-2.amazonaws.com", 443)
            control = "not blocked"
        except RuntimeError:
            control = "blocked"
        print(json.dumps({{"during": during, "aws_modules": aws, "control": control}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"during": [], "aws_modules": [], "control": "blocked"}, result


def _rename_head(c: dict) -> None:
    c["available_node_types"]["ray_head"] = c["available_node_types"].pop("head")


def _set(*path: str, value: Any) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        target = c
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _drop(*path: str) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        target = c
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


def _edit_commands(key: str, old: str, new: str) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        c[key] = [cmd.replace(old, new) for cmd in c[key]]
    return mutate


FAKE_SECRET = "as-4f8e2c1d9b7a"

BROKEN = {
    "head type missing from node types": (
        _rename_head, r"`head_node_type` must be one of `available_node_types`"),
    "min_workers above max_workers on a node type": (
        _set("available_node_types", "rollout", "min_workers", value=9),
        r"available_node_types\.rollout: min_workers 9 > max_workers 8"),
    "sum of min_workers above the global max_workers": (
        _set("max_workers", value=0), r"global `max_workers` is smaller than the sum"),
    "fractional custom resource": (
        _set("available_node_types", "rollout", "resources", "sandbox_slots", value=0.5),
        r"available_node_types/rollout/resources/sandbox_slots: 0\.5 is not of type 'integer'"),
    "unknown top-level key": (
        _set("idle_timeout_minute", value=5), r"'idle_timeout_minute' was unexpected"),
    "unknown node-type key": (
        _set("available_node_types", "rollout", "max_worker", value=5),
        r"available_node_types/rollout: .*'max_worker' was unexpected"),
    "no slot node kept warm": (
        _set("available_node_types", "rollout", "min_workers", value=0),
        r"no node type with sandbox_slots has min_workers >= 1"),
    "provider type missing": (_drop("provider", "type"), r"provider\.type is missing"),
    "worker type without sandbox_slots": (
        _set("available_node_types", "rollout_spot", "resources", value={}),
        r"available_node_types\.rollout_spot: resources\.sandbox_slots must be > 0"),
    "ray pinned to another version": (
        _edit_commands("setup_commands", "ray[default]==", "ray[default]==1.0."),
        r"setup_commands pin ray 1\.0\.\S+ but this checkout runs ray"),
    "no ulimit before ray start": (
        _edit_commands("worker_start_ray_commands", "ulimit -n 65536 &&", ""),
        r"worker_start_ray_commands: `ray start` without `ulimit -n 65536`"),
    "credentials file not sourced": (
        _edit_commands("head_start_ray_commands", ". ~/.hud-ray/secrets.env", "true"),
        r"head_start_ray_commands: `ray start` does not source the credentials file"),
    "literal secret in a command": (
        _edit_commands("setup_commands", "test -x", f"export MODAL_TOKEN_SECRET={FAKE_SECRET}; test -x"),
        r"setup_commands\[1\]: sets MODAL_TOKEN_SECRET to a literal value"),
    "literal secret as a key": (
        _set("provider", "DAYTONA_API_KEY", value=FAKE_SECRET),
        r"provider\.DAYTONA_API_KEY: a literal credential value|'DAYTONA_API_KEY' was unexpected"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_copy_fails_naming_the_problem(case, cluster_config, ray_version):
    mutate, message = BROKEN[case]
    broken = copy.deepcopy(cluster_config)
    mutate(broken)
    with pytest.raises(ClusterConfigError, match=message) as info:
        check_cluster_config(broken, ray_version)
    assert FAKE_SECRET not in str(info.value)  # a credential is never echoed back
    assert len(str(info.value)) < 400, "the message should be one clear line, not a schema dump"


def test_the_checker_itself_does_not_mutate_the_input(cluster_config, ray_version):
    before = json.dumps(cluster_config, sort_keys=True)
    check_cluster_config(cluster_config, ray_version)
    assert json.dumps(cluster_config, sort_keys=True) == before


# --- deploy/kuberay.yaml ---------------------------------------------------------------

def _ray_start_resources(group: dict) -> dict[str, int]:
    """KubeRay's format: the value is a JSON string literal holding a JSON object."""
    raw = group["rayStartParams"]["resources"]
    return json.loads(json.loads(raw))


def test_kuberay_manifest_mirrors_cluster_yaml(cluster_config, ray_version):
    manifest = yaml.safe_load(KUBERAY_YAML.read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    spec = manifest["spec"]
    assert spec["rayVersion"] == ray_version
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 60 * cluster_config[
        "idle_timeout_minutes"]

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    rollout = groups["rollout"]
    aws = cluster_config["available_node_types"]["rollout"]
    assert _ray_start_resources(rollout) == {"sandbox_slots": aws["resources"]["sandbox_slots"]}
    assert rollout["minReplicas"] == aws["min_workers"]
    assert rollout["maxReplicas"] == aws["max_workers"]
    assert rollout["minReplicas"] <= rollout["replicas"] <= rollout["maxReplicas"]

    for group in [head, *groups.values()]:
        # KubeRay passes rayStartParams to `ray start` verbatim: every value is a string.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group
        container = group["template"]["spec"]["containers"][0]
        assert ray_version in container["image"]
        # Credentials come from a Kubernetes Secret, never from the manifest.
        assert {"secretRef": {"name": "hud-ray-credentials"}} in container["envFrom"]
        literal = [e["name"] for e in container.get("env", [])
                   if "value" in e and CREDENTIAL_NAME.match(e["name"])]
        assert not literal, f"credentials written into the manifest: {literal}"
