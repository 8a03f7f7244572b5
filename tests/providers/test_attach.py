"""providers.attach: rollouts against a borrowed, already running env server."""

from __future__ import annotations

import asyncio

import pytest

from hud_ray.agents import resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, iter_tasks
from providers import ProviderConfigError, get_provider
from providers.attach import AttachProvider

from ..fakes.procs import DEMO_ENV, DEMO_TASKS, EnvServer, alive


@pytest.mark.parametrize("options, named", [
    ({}, "url"),
    ({"url": "http://127.0.0.1:8765"}, "url"),
    ({"url": "tcp://127.0.0.1:port"}, "url"),
    ({"url": "tcp://h:1", "token": "x"}, "token"),
])
def test_bad_options_are_named(options, named):
    with pytest.raises(ProviderConfigError, match=rf"provider 'attach'.*{named}"):
        get_provider("attach", **options)


def test_concurrent_rollouts_share_the_borrowed_server_and_never_stop_it():
    # One task per template; each rollout gets its own control session on the one server.
    firsts: dict[str, Rollout] = {}
    for _, task in iter_tasks(DEMO_TASKS):
        firsts.setdefault(task.id, Rollout(task=task))

    with EnvServer(DEMO_ENV) as server:
        provider = AttachProvider(url=server.url)

        async def main():
            agent = resolve_agent("rule")
            return await asyncio.gather(*(
                run_rollout(r, agent, provider, RolloutConfig(deadline_s=30))
                for r in firsts.values()))

        rows = asyncio.run(main())
        assert alive(server.pid), "attach must never destroy what it borrowed"
        assert asyncio.run(provider.list({})) == []
    assert {r.template_id: (r.status, r.reward) for r in rows} == {
        t: (Status.OK, 0.0 if t == "riddle" else 1.0) for t in firsts}
    assert {r.sandbox_id for r in rows} == {server.url}
