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


# --- the pool's bookkeeping, with stand-in actors (ending one = its `shutdown` called) --------

class _Method:
    def __init__(self, calls: list[str], name: str) -> None:
        self.calls, self.name = calls, name

    def remote(self) -> None:
        self.calls.append(self.name)


class _Actor:
    def __init__(self, name: str, ended: list[str]) -> None:
        self.shutdown = _Method(ended, name)


def _lend(pool, names: list[str], ended: list[str]) -> None:
    from hud_ray.pool import _Kept

    for name in names:
        pool._lent[name] = _Kept(_Actor(name, ended), name, "k", pool._generation)


def test_at_most_max_idle_are_kept_the_oldest_go_first():
    from hud_ray.pool import MAX_IDLE, WorkerPool

    pool, ended = WorkerPool(idle_timeout_s=300), []
    names = [f"w{i}" for i in range(MAX_IDLE + 2)]
    _lend(pool, names, ended)
    pool.release([(name, True) for name in names])
    assert pool.idle_count("k") == MAX_IDLE and ended == ["w0", "w1"]


def test_unclean_ones_and_those_lent_across_a_shutdown_are_not_kept():
    from hud_ray.pool import WorkerPool

    pool, ended = WorkerPool(idle_timeout_s=300), []
    _lend(pool, ["a", "b", "c"], ended)
    pool.shutdown()  # while "c" is still lent to a run
    _lend(pool, ["d"], ended)
    pool.release([("a", False), ("b", True), ("d", True)])
    assert pool.idle_count() == 1 and ended == ["b"]  # "a" killed outright: not clean
    pool.release([("c", True)])
    assert pool.idle_count() == 1 and ended == ["b", "c"]


def test_idle_timeout_ends_them_in_the_background():
    import time

    from hud_ray.pool import WorkerPool

    pool, ended = WorkerPool(idle_timeout_s=0.2), []
    _lend(pool, ["a", "b"], ended)
    pool.release([("a", True), ("b", True)])
    assert pool.idle_count() == 2
    deadline = time.monotonic() + 10
    while pool.idle_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.idle_count() == 0 and sorted(ended) == ["a", "b"]
