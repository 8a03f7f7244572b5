"""A real asyncssh server standing in for Daytona's SSH gateway (tests only).

Like the real gateway: the SSH username is the access token, there is no password or key,
and `direct-tcpip` channels reach only loopback *inside the sandbox the token belongs to*.
Each fake sandbox is a local env-server process on its own real port, so the gateway maps
"127.0.0.1:<port inside the sandbox>" to that process's port — the sandbox's own network.

Runs its own event loop in a thread, so it serves while a test's loop is busy and can also
live inside a standalone fake process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class AuthRecord:
    token: str
    sandbox_id: str | None
    outcome: str  # "accepted" | "bad-token" | "refused"


class SshGateway:
    """`authorize(token) -> sandbox_id | None` and `port_for(sandbox_id, port) -> int | None`
    are supplied by the fake API, which owns tokens and sandboxes."""

    def __init__(
        self,
        authorize: Callable[[str], str | None],
        port_for: Callable[[str, int], int | None],
    ) -> None:
        self._authorize = authorize
        self._port_for = port_for
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = 0
        #: the first N connections of every sandbox are dropped after the handshake,
        #: like a gateway whose sandbox SSH daemon is not up yet.
        self.refuse_first_connects = 0
        self.auths: list[AuthRecord] = []
        self.channels: list[tuple[str, int, str]] = []  # (sandbox_id, port, outcome)
        self._connects: dict[str, int] = {}
        self._conns: dict[str, set[Any]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-ssh-gateway",
                                        daemon=True)
        self._server: Any = None

    @property
    def fingerprint(self) -> str:
        return self.host_key.get_fingerprint("sha256")

    def known_hosts_line(self) -> str:
        key = self.host_key.export_public_key("openssh").decode().strip()
        return f"[127.0.0.1]:{self.port} {key}\n"

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> int:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(10)
        return self.port

    async def _listen(self) -> int:
        self._server = await asyncssh.create_server(
            lambda: _GatewayConnection(self), "127.0.0.1", 0,
            server_host_keys=[self.host_key], allow_scp=False,
        )
        return self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            for conns in self._conns.values():
                for conn in list(conns):
                    conn.close()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --- faults ----------------------------------------------------------------------
    def drop(self, sandbox_id: str) -> int:
        """Close every SSH connection into `sandbox_id` (a tunnel dying mid-rollout)."""
        with self._lock:
            conns = list(self._conns.get(sandbox_id, ()))
        for conn in conns:
            self._loop.call_soon_threadsafe(conn.close)
        return len(conns)

    def open_connections(self, sandbox_id: str) -> int:
        with self._lock:
            return len(self._conns.get(sandbox_id, ()))

    # --- called from connections ----------------------------------------------------
    def _admit(self, token: str, conn: Any) -> str | None:
        sandbox_id = self._authorize(token)
        with self._lock:
            if sandbox_id is None:
                self.auths.append(AuthRecord(token, None, "bad-token"))
                return None
            seen = self._connects.get(sandbox_id, 0)
            self._connects[sandbox_id] = seen + 1
            if seen < self.refuse_first_connects:
                self.auths.append(AuthRecord(token, sandbox_id, "refused"))
                return ""
            self.auths.append(AuthRecord(token, sandbox_id, "accepted"))
            self._conns.setdefault(sandbox_id, set()).add(conn)
        return sandbox_id

    def _forget(self, sandbox_id: str | None, conn: Any) -> None:
        if sandbox_id:
            with self._lock:
                self._conns.get(sandbox_id, set()).discard(conn)


class _GatewayConnection(asyncssh.SSHServer):
    def __init__(self, gateway: SshGateway) -> None:
        self._gateway = gateway
        self._conn: Any = None
        self._sandbox_id: str | None = None

    def connection_made(self, conn: Any) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        self._gateway._forget(self._sandbox_id, self._conn)

    def begin_auth(self, username: str) -> bool:
        sandbox_id = self._gateway._admit(username, self._conn)
        if sandbox_id == "":
            # The sandbox's SSH daemon "is not up": hang up right after the handshake.
            asyncio.get_running_loop().call_soon(self._conn.close)
            return True
        if sandbox_id is None:
            return True  # auth required, and no method offered succeeds: permission denied
        self._sandbox_id = sandbox_id
        return False  # the token is the credential: no further auth

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        sandbox_id = self._sandbox_id or "?"
        if dest_host not in LOOPBACK:
            self._gateway.channels.append((sandbox_id, dest_port, "not-loopback"))
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "only loopback inside the sandbox"
            )
        real_port = self._gateway._port_for(sandbox_id, dest_port)
        if real_port is None:
            self._gateway.channels.append((sandbox_id, dest_port, "refused"))
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused")
        self._gateway.channels.append((sandbox_id, dest_port, "forwarded"))
        return self._conn.forward_connection("127.0.0.1", real_port)
