"""The pool key (hud_ray.pool): what makes two workers' sandboxes differ, never a secret."""

from __future__ import annotations

from hud_ray.pool import WorkerRequest


def _key(**changes) -> str:
    fields = {"provider": "modal", "provider_options": {"image": "python:3.12", "app": "a"},
              "env_vars": {"MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "s3cr3t-value"},
              "resources": {}, "max_concurrency": 8, "run": ("agent", {}, 4, None, 0)}
    return WorkerRequest(**{**fields, **changes}).key()


def test_same_configuration_same_key_whatever_the_run():
    assert _key() == _key(run=("another agent", {"run_id": "r2"}, 16, {}, 3), max_concurrency=32)
    # Option order does not matter; values do.
    assert _key(provider_options={"app": "a", "image": "python:3.12"}) == _key()


def test_anything_that_makes_sandboxes_differ_changes_the_key():
    base = _key()
    assert _key(provider="daytona") != base
    assert _key(provider_options={"image": "python:3.11", "app": "a"}) != base
    assert _key(env_vars={"MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "other"}) != base
    assert _key(env_vars={"MODAL_TOKEN_ID": "ak-2", "MODAL_TOKEN_SECRET": "s3cr3t-value"}) != base
    assert _key(resources={"sandbox_slots": 4}) != base


def test_the_key_holds_no_secret():
    key = _key()
    assert len(key) == 64 and "s3cr3t" not in key and "ak-1" not in key
