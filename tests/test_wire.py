"""hud_ray.wire against misbehaving peers (small raw asyncio servers).

Every failure must surface as one typed error within its timeout: never a hang, never a
bare OSError/ValueError. Readiness, heartbeats and tunnels: test_wire_connect.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from hud_ray.wire import (
    FRAME_LIMIT_BYTES,
    FrameTooLarge,
    ProtocolError,
    RemoteError,
    TransportError,
    WireTimeout,
    encode_frame,
)

from .fakes.peers import Peer, connected, reply, run, silent

# --- frame size limits -------------------------------------------------------------------


def test_client_refuses_to_send_an_oversized_frame_and_stays_usable():
    async def answer(msg, writer):
        writer.write(reply(msg["id"], {"tasks": [], "got": len(json.dumps(msg["params"]))}))
        await writer.drain()
        return True

    async def main():
        peer = Peer(answer)
        async with connected(peer) as client:
            with pytest.raises(FrameTooLarge, match=str(FRAME_LIMIT_BYTES)):
                await client.call("tasks.grade", {"answer": "x" * FRAME_LIMIT_BYTES})
            # nothing but hello reached the peer, and the session still works
            assert [f["method"] for f in peer.frames] == ["hello"]
            assert (await client.call("tasks.list", timeout_s=5))["tasks"] == []

    run(main())


def test_a_frame_of_exactly_the_limit_goes_through_both_ways():
    empty = len(encode_frame({"jsonrpc": "2.0", "id": 2, "method": "tasks.grade",
                              "params": {"answer": ""}})) - 1
    answer = "y" * (FRAME_LIMIT_BYTES - empty)
    assert len(encode_frame({"jsonrpc": "2.0", "id": 2, "method": "tasks.grade",
                             "params": {"answer": answer}})) == FRAME_LIMIT_BYTES + 1

    async def echo_back(msg, writer):
        base = len(reply(msg["id"], {"score": 1.0, "pad": ""})) - 1
        writer.write(reply(msg["id"], {"score": 1.0, "pad": "z" * (FRAME_LIMIT_BYTES - base)}))
        await writer.drain()
        return True

    async def main():
        async with connected(Peer(echo_back)) as client:
            result = await client.grade(answer, timeout_s=20)
            assert result["score"] == 1.0 and len(result["pad"]) > FRAME_LIMIT_BYTES - 100

    run(main())


@pytest.mark.parametrize("newline", [True, False], ids=["with-newline", "never-ending-line"])
def test_server_sending_an_oversized_frame_is_frame_too_large(newline):
    async def flood(msg, writer):
        head = b'{"jsonrpc":"2.0","id":%d,"result":{"pad":"' % msg["id"]
        writer.write(head + b"a" * (FRAME_LIMIT_BYTES + 10) + (b'"}}\n' if newline else b""))
        await writer.drain()
        return True  # keep the connection open: the client must not wait for more

    async def main():
        async with connected(Peer(flood)) as client:
            t0 = time.monotonic()
            with pytest.raises(FrameTooLarge):
                await client.call("tasks.list", timeout_s=20)
            assert time.monotonic() - t0 < 10
            # the connection is poisoned: later calls fail at once, typed
            with pytest.raises(FrameTooLarge):
                await client.call("tasks.list", timeout_s=5)

    run(main())


# --- garbage, hang-ups, silence --------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"this is not json\n", b"[1, 2, 3]\n", b"\xff\xfe\x00\n",
                                     b'{"jsonrpc":"2.0","id":2}\n'])
def test_garbage_reply_is_a_protocol_error(garbage):
    async def babble(msg, writer):
        writer.write(garbage)
        await writer.drain()
        return True

    async def main():
        async with connected(Peer(babble)) as client:
            with pytest.raises(ProtocolError) as info:
                await client.call("tasks.list", timeout_s=5)
            assert not isinstance(info.value, RemoteError)

    run(main())


@pytest.mark.parametrize("last_words", [b"", b'{"jsonrpc":"2.0","id":2,"res'])
def test_server_closing_mid_call_is_a_transport_error(last_words):
    async def hang_up(msg, writer):
        writer.write(last_words)
        await writer.drain()
        return False

    async def main():
        async with connected(Peer(hang_up)) as client:
            t0 = time.monotonic()
            with pytest.raises(TransportError):
                await client.start("count", {}, timeout_s=10)
            assert time.monotonic() - t0 < 5

    run(main())


def test_server_that_never_answers_is_a_wire_timeout():
    async def main():
        async with connected(Peer(silent)) as client:
            t0 = time.monotonic()
            with pytest.raises(WireTimeout) as info:
                await client.grade("42", timeout_s=0.3)
            assert isinstance(info.value, TimeoutError)
            assert 0.3 <= time.monotonic() - t0 < 2

    run(main())


def test_late_reply_to_a_timed_out_call_does_not_answer_the_next_call():
    held: list[dict[str, Any]] = []

    async def late(msg, writer):
        if not held:
            held.append(msg)  # answer this one only after the next request arrives
            return True
        writer.write(reply(held[0]["id"], {"tasks": ["stale"]}))
        writer.write(reply(msg["id"], {"tasks": ["fresh"]}))
        await writer.drain()
        return True

    async def main():
        async with connected(Peer(late)) as client:
            with pytest.raises(WireTimeout):
                await client.call("tasks.list", timeout_s=0.2)
            assert (await client.call("tasks.list", timeout_s=5))["tasks"] == ["fresh"]

    run(main())


def test_close_fails_a_pending_call_instead_of_leaving_it_hanging():
    async def main():
        async with connected(Peer(silent)) as client:
            pending = asyncio.create_task(client.grade("1", timeout_s=30))
            await asyncio.sleep(0)  # let the request go out
            await client.close()
            with pytest.raises(TransportError):
                await asyncio.wait_for(pending, 5)

    run(main())


@pytest.mark.parametrize("score", ["NaN", "Infinity", "-Infinity", '"1.0"', "true", "null"])
def test_grade_with_a_bad_score_is_a_protocol_error(score):
    async def grade(msg, writer):
        writer.write(b'{"jsonrpc":"2.0","id":%d,"result":{"score":%s}}\n'
                     % (msg["id"], score.encode()))
        await writer.drain()
        return True

    async def main():
        async with connected(Peer(grade)) as client:
            with pytest.raises(ProtocolError, match="score"):
                await client.grade("answer", timeout_s=5)

    run(main())


def test_error_with_null_id_fails_the_pending_call_as_remote_error():
    # hud's server answers an oversized request with an id-null error, then closes.
    async def refuse(msg, writer):
        writer.write(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"too big"}}\n')
        await writer.drain()
        return True

    async def main():
        async with connected(Peer(refuse)) as client:
            with pytest.raises(RemoteError, match="too big") as info:
                await client.call("tasks.list", timeout_s=5)
            assert info.value.code == -32000

    run(main())
