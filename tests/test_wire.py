"""hud_ray.wire against misbehaving peers (small raw asyncio servers) and a real envkit server.

Every failure must surface as one typed error within its timeout: never a hang, never a
bare OSError/ValueError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hud_ray.wire import (
    FRAME_LIMIT_BYTES,
    EnvClient,
    FrameTooLarge,
    ProtocolError,
    RemoteError,
    TransportError,
    WireTimeout,
    encode_frame,
)

from .fakes.procs import DEMO_ENV, EnvServer, async_wait_until

HELLO = {"session_id": "sess-fake", "env": {"name": "fake", "version": "0"}, "bindings": []}

# A peer's behaviour for every non-hello request: write whatever, return False to hang up.
Behaviour = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[bool]]


def reply(msg_id: Any, result: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}).encode() + b"\n"


class Peer:
    """A fake env server: answers hello, hands everything else to `behaviour`."""

    def __init__(self, behaviour: Behaviour | None = None, *, greet: bool = True) -> None:
        self.behaviour = behaviour
        self.greet = greet
        self.frames: list[dict[str, Any]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                self.frames.append(msg)
                if msg.get("method") == "hello" and self.greet:
                    writer.write(reply(msg["id"], HELLO))
                    await writer.drain()
                elif self.behaviour is None or not await self.behaviour(msg, writer):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def serving(peer: Peer) -> AsyncIterator[Peer]:
    peer.server = await asyncio.start_server(peer.handle, "127.0.0.1", 0, limit=64 << 20)
    try:
        yield peer
    finally:
        peer.server.close()


@contextlib.asynccontextmanager
async def connected(peer: Peer, **kw: Any) -> AsyncIterator[EnvClient]:
    async with serving(peer):
        client = await EnvClient.connect(peer.url, ready_timeout_s=5, heartbeat_s=None, **kw)
        try:
            yield client
        finally:
            await client.close()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def silent(msg: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
    return True  # read on, never answer


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


# --- readiness -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connect_retries_while_refused_then_succeeds_when_the_server_appears():
    async def main():
        port = _free_port()
        peer = Peer()
        t0 = time.monotonic()
        connecting = asyncio.create_task(EnvClient.connect(
            f"tcp://127.0.0.1:{port}", ready_timeout_s=10, retry_interval_s=0.05,
            heartbeat_s=None))
        await asyncio.sleep(0.4)  # the env is still booting: nothing listens yet
        assert not connecting.done(), "connect gave up on a refused port"
        peer.server = await asyncio.start_server(peer.handle, "127.0.0.1", port)
        try:
            client = await asyncio.wait_for(connecting, 5)
            assert client.session_id == "sess-fake"
            assert time.monotonic() - t0 >= 0.4
            await client.close()
        finally:
            peer.server.close()

    run(main())


def test_connect_treats_eof_before_hello_as_not_ready_yet():
    # A forwarded port accepts before the env behind it serves: EOF means "retry".
    async def main():
        peer = Peer()
        original = peer.handle

        async def flaky(reader, writer):
            if peer.connections < 3:
                peer.connections += 1
                writer.close()
                return
            await original(reader, writer)

        peer.server = await asyncio.start_server(flaky, "127.0.0.1", 0)
        try:
            client = await EnvClient.connect(peer.url, ready_timeout_s=10, retry_interval_s=0.02,
                                             heartbeat_s=None)
            assert peer.connections == 4 and client.session_id == "sess-fake"
            await client.close()
        finally:
            peer.server.close()

    run(main())


@pytest.mark.parametrize("listening", [False, True], ids=["refused", "silent"])
def test_ready_timeout_is_a_wire_timeout(listening):
    async def main():
        peer = Peer(greet=False, behaviour=silent)
        if listening:
            peer.server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
            url = peer.url
        else:
            url = f"tcp://127.0.0.1:{_free_port()}"
        t0 = time.monotonic()
        try:
            with pytest.raises(WireTimeout, match="not ready"):
                await EnvClient.connect(url, ready_timeout_s=0.6, retry_interval_s=0.05)
            assert time.monotonic() - t0 < 3
        finally:
            if peer.server is not None:
                peer.server.close()

    run(main())


def test_connect_fails_at_once_when_hello_is_refused():
    async def refuse(msg, writer):
        writer.write(b'{"jsonrpc":"2.0","id":%d,"error":{"code":-32602,"message":"no"}}\n'
                     % msg["id"])
        await writer.drain()
        return True

    async def main():
        async with serving(Peer(refuse, greet=False)) as peer:
            t0 = time.monotonic()
            with pytest.raises(RemoteError) as info:
                await EnvClient.connect(peer.url, ready_timeout_s=10, retry_interval_s=0.05)
            assert info.value.code == -32602 and peer.connections == 1
            assert time.monotonic() - t0 < 2

    run(main())


def test_heartbeat_resends_hello_with_its_own_session_id():
    async def main():
        async with serving(Peer()) as peer:
            client = await EnvClient.connect(peer.url, ready_timeout_s=5, heartbeat_s=0.05)
            try:
                await async_wait_until(lambda: len(peer.frames) >= 4, 5, "three heartbeats")
            finally:
                await client.close()
        hellos = [f for f in peer.frames if f["method"] == "hello"]
        assert len(hellos) >= 4, peer.frames
        assert hellos[0]["params"] == {}
        assert all(h["params"] == {"session_id": "sess-fake"} for h in hellos[1:])

    run(main())


def test_preamble_goes_first_on_control_and_tunnel_connections():
    seen: list[bytes] = []

    async def gate(reader, writer):
        seen.append(await reader.readline())
        first = json.loads(await reader.readline())
        if first["method"] == "tunnel.open":
            writer.write(reply(first["id"], {"capability": "kv"}) + b"raw-bytes")
        else:
            writer.write(reply(first["id"], HELLO))
        await writer.drain()
        await reader.read()
        writer.close()

    async def main():
        server = await asyncio.start_server(gate, "127.0.0.1", 0)
        url = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            client = await EnvClient.connect(url, preamble=b"TOKEN s3cret\n", heartbeat_s=None)
            reader, writer = await client.open_tunnel("kv")
            assert await reader.readexactly(9) == b"raw-bytes"
            writer.close()
            await client.close()
        finally:
            server.close()
        assert seen == [b"TOKEN s3cret\n", b"TOKEN s3cret\n"]

    run(main())


# --- against a real envkit server --------------------------------------------------------


@pytest.fixture(scope="module")
def demo_server():
    with EnvServer(DEMO_ENV) as server:
        yield server


def test_unknown_method_is_remote_error_32601_and_the_session_survives(demo_server):
    async def main():
        client = await EnvClient.connect(demo_server.url, heartbeat_s=None)
        try:
            with pytest.raises(RemoteError) as info:
                await client.call("tasks.frobnicate", {}, timeout_s=5)
            assert info.value.code == -32601 and info.value.method == "tasks.frobnicate"
            started = await client.start("reverse", {"word": "abc"}, timeout_s=5)
            assert "abc" in started["prompt"]
            assert (await client.grade("cba", timeout_s=5))["score"] == 1.0
        finally:
            await client.bye()

    run(main())


def test_tunnel_open_reaches_the_demo_kv_capability(demo_server):
    async def main():
        client = await EnvClient.connect(demo_server.url, heartbeat_s=None)
        try:
            assert [b["name"] for b in client.bindings] == ["kv"]
            reader, writer = await client.open_tunnel("kv")
            for key, want in (("key3", "value-757"), ("key10", "value-190"), ("nope", "")):
                writer.write(f"GET {key}\n".encode())
                await writer.drain()
                assert (await asyncio.wait_for(reader.readline(), 5)).decode().strip() == want
            writer.close()
        finally:
            await client.bye()

    run(main())


def test_forward_listener_splices_each_connection_to_the_capability(demo_server):
    async def one(port: int, key: str) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {key}\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return line.decode().strip()

    async def main():
        client = await EnvClient.connect(demo_server.url, heartbeat_s=None)
        forwarder = await client.forward("kv")
        try:
            assert forwarder.address == f"127.0.0.1:{forwarder.port}"
            got = await asyncio.gather(*(one(forwarder.port, f"key{i}") for i in range(5)))
            assert got == [f"value-{i * 7919 % 1000:03d}" for i in range(5)]
        finally:
            await forwarder.close()
            await client.bye()

    run(main())


def test_unknown_capability_is_remote_error(demo_server):
    async def main():
        client = await EnvClient.connect(demo_server.url, heartbeat_s=None)
        try:
            with pytest.raises(RemoteError, match="unknown capability"):
                await client.open_tunnel("ssh", timeout_s=5)
        finally:
            await client.bye()

    run(main())
