"""hud_ray.wire: readiness (connect retries), heartbeats, preamble, tunnels to a real env."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from hud_ray.wire import EnvClient, NeverAnswered, RemoteError, WireTimeout

from .fakes.peers import HELLO, Peer, reply, run, serving, silent
from .fakes.procs import DEMO_ENV, EnvServer, async_wait_until

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
            # Refused: still booting (infra). Accepted, then silence: the env's own fault.
            with pytest.raises(WireTimeout, match="never answered hello" if listening
                               else "not ready") as caught:
                await EnvClient.connect(url, ready_timeout_s=0.6, retry_interval_s=0.05)
            assert isinstance(caught.value, NeverAnswered) is listening
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


def test_closing_a_forwarder_with_connections_open_logs_no_error(demo_server):
    """A rollout ends with its agent's tunnel connections still open: close() ends them
    without the loop reporting a cancelled connection handler."""
    reported: list[dict] = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        client = await EnvClient.connect(demo_server.url, heartbeat_s=None)
        forwarder = await client.forward("kv")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
            writer.write(b"GET key3\n")
            await writer.drain()
            assert (await asyncio.wait_for(reader.readline(), 5)).strip() == b"value-757"
            await forwarder.close()  # the connection is still open
            assert await asyncio.wait_for(reader.read(), 5) == b""  # and now closed
            writer.close()
        finally:
            await client.bye()
        await asyncio.sleep(0)  # let the streams' done-callbacks run

    run(main())
    assert reported == []
