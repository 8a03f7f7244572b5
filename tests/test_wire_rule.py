"""One rule for garbage on the wire, the same in every phase (issue 20 item 10): garbage
from the env is `env_error` and not retried, a broken connection `infra_error`."""

from __future__ import annotations

import asyncio

import pytest

from hud_ray.agents import resolve_agent
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.schema import Status
from hud_ray.tasks import Rollout, Task
from providers.attach import AttachProvider

from .fakes.peers import Peer, reply, serving

GARBAGE = b"HTTP/1.1 400 Bad Request\r\n"


def _peer(phase: str, answer: bytes | None) -> Peer:
    """Answers `phase` with `answer` (None: hang up), everything else properly."""
    async def behaviour(msg, writer) -> bool:
        if msg["method"] == phase:
            if answer is None:
                return False
            writer.write(answer)
        else:
            writer.write(reply(msg["id"], {"prompt": "p", "score": 1.0}))
        await writer.drain()
        return True
    return Peer(behaviour, greet=phase != "hello")


def _rollout(peer: Peer):
    async def main():
        async with serving(peer):
            return await run_rollout(Rollout(task=Task(id="any")), resolve_agent("nop"),
                                     AttachProvider(url=peer.url),
                                     RolloutConfig(deadline_s=20, ready_timeout_s=3))
    return asyncio.run(main())


@pytest.mark.parametrize("phase, named", [
    ("hello", "hello: not JSON: b'HTTP/1.1 400 Bad Request"),
    ("tasks.start", "tasks.start: not JSON: b'HTTP/1.1 400 Bad Request"),
    ("tasks.grade", "tasks.grade: not JSON: b'HTTP/1.1 400 Bad Request"),
])
def test_garbage_is_env_error_in_every_phase(phase, named):
    row = _rollout(_peer(phase, GARBAGE))
    assert row.status is Status.ENV_ERROR and row.error_type == "ProtocolError", row
    assert row.error_message.startswith(named), row.error_message
    assert row.timeout_phase is None


def test_a_reply_without_its_required_fields_is_env_error_too():
    no_session = b'{"jsonrpc": "2.0", "id": 1, "result": {"nothing": 1}}\n'
    assert _rollout(_peer("hello", no_session)).status is Status.ENV_ERROR

    async def no_prompt(msg, writer) -> bool:
        writer.write(reply(msg["id"], {"no_prompt": True}))
        await writer.drain()
        return True
    row = _rollout(Peer(no_prompt))
    assert row.status is Status.ENV_ERROR and "reply has no prompt" in row.error_message, row


def test_a_hang_up_mid_rollout_is_infra_error():
    row = _rollout(_peer("tasks.start", None))
    assert row.status is Status.INFRA_ERROR, row
