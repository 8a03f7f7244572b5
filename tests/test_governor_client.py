"""The worker's governor client: a request cancelled while it waits leaves the queue, and
`close()` sends the last updates and stops the pump (a kept worker drops the client at its
next run; a pump left looping would be destroyed mid-flight)."""

from __future__ import annotations

import asyncio

from hud_ray.governor_client import GovernorClient


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return asyncio.ensure_future(self.fn(*args))


class FakeGovernor:
    """Grants nothing; records every update."""

    def __init__(self) -> None:
        self.asks = 0
        self.asked = asyncio.Event()
        self.updates: list[tuple] = []
        self.acquire = _Method(self._acquire)
        self.update = _Method(self._update)

    async def _acquire(self, worker_id, entries, wait_s):
        self.asks += 1
        self.asked.set()
        return 0

    async def _update(self, created, destroyed, quota):
        self.updates.append((created, destroyed, quota))


def test_a_cancelled_request_leaves_the_queue_and_the_pump_stops():
    async def scenario():
        governor = FakeGovernor()
        client = GovernorClient(governor, "w0", flush_s=0.01)
        waiter = asyncio.create_task(client.acquire({"name": "sb-1"}))
        await asyncio.wait_for(governor.asked.wait(), 5)  # asked once, refused
        waiter.cancel()
        client.destroyed("sb-0")  # the run's last destroy, still queued
        await asyncio.wait_for(client.close(), 5)
        assert client._pump.done() and not client._pump.cancelled()
        assert client._waiting == []
        assert ([], ["sb-0"], 0) in governor.updates
        asks = governor.asks
        await asyncio.sleep(0.1)
        assert governor.asks == asks, "the pump kept asking for a cancelled request"

    asyncio.run(scenario())
