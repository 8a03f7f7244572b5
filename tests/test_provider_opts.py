"""`--provider-opt KEY=VALUE`: JSON only where the option is declared a dict or list
(issue 20 item 9); everything else is the string typed, typed by the provider's model."""

from __future__ import annotations

import pytest

from hud_ray.cli import parse_options, provider_json_keys
from providers import get_provider


def test_only_dict_and_list_options_are_json():
    assert provider_json_keys("local") == frozenset()
    assert {"env", "secrets", "inbound_cidr_allowlist"} <= provider_json_keys("modal")
    assert "command" not in provider_json_keys("modal") and "sdk" not in provider_json_keys("modal")
    assert {"env_vars", "labels", "entrypoint", "resources"} <= provider_json_keys("daytona")
    assert "command" not in provider_json_keys("daytona")


def test_a_command_starting_with_a_brace_is_a_command():
    command = "{python} -m hud_ray.envkit {env_file} --port 0"
    options = parse_options([f"command={command}", "zygote=false", "kill_grace_s=1.5"],
                            json_keys=provider_json_keys("local"))
    assert options == {"command": command, "zygote": "false", "kill_grace_s": "1.5"}
    provider = get_provider("local", **options)
    assert provider.options.command == command and provider.options.zygote is False
    assert provider.options.kill_grace_s == 1.5


def test_dict_and_list_options_are_decoded_and_checked():
    keys = provider_json_keys("modal")
    options = parse_options(['env={"A": "1"}', 'secrets=["s1"]', "command=[not json]"],
                            json_keys=keys)
    assert options == {"env": {"A": "1"}, "secrets": ["s1"], "command": "[not json]"}
    with pytest.raises(ValueError, match=r"'env=\{A\}': the value is not valid JSON"):
        parse_options(["env={A}"], json_keys=keys)


def test_a_nested_model_option_is_json():
    options = parse_options(['resources={"cpu": 2}'], json_keys=provider_json_keys("daytona"))
    provider = get_provider("daytona", api_key="k", **options)
    assert provider.options.resources.cpu == 2
