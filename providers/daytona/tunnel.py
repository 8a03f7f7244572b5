"""The way into a Daytona sandbox: an SSH local forward through Daytona's SSH gateway.

The env server binds 127.0.0.1 inside the sandbox; `create_ssh_access` gives a short-lived
token that *is* the SSH username, and asyncssh forwards a local loopback port to
`127.0.0.1:<port>` inside. Facts that shape this module:

- The gateway's host and port vary (ssh.app.daytona.io:22, 2222 in the open-source
  gateway): they are parsed from `ssh_command`, never assumed.
- The gateway may accept a handshake and only then find the token bad or the sandbox's
  SSH daemon not up, and `forward_local_port` only opens a listener: a refused channel
  shows up as the local socket closing. Readiness is therefore a wire `hello` through the
  tunnel (`hello_probe`), retried — never "the SSH connection opened".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("providers.daytona")

# ssh(1) options that take an argument; anything else starting with "-" is a flag.
_SSH_ARG_OPTIONS = set("BbcDEeFIiJLlmOoPpQRSWw")
_HELLO = b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{}}\n'
_BYE = b'{"jsonrpc":"2.0","id":2,"method":"bye","params":{}}\n'
_warned_hosts: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    username: str

    def __repr__(self) -> str:  # the username is a credential (the access token)
        return f"SshTarget(host={self.host!r}, port={self.port})"


def parse_ssh_command(command: str, token: str) -> SshTarget:
    """Host, port and user of an `ssh ...` line (`ssh -p 2222 TOKEN@host`, `ssh TOKEN@host`,
    `ssh -o Port=22 -l TOKEN host`, `ssh ssh://TOKEN@host:2222`)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"unparsable ssh_command: {exc}") from None
    if argv and argv[0].rsplit("/", 1)[-1] == "ssh":
        argv = argv[1:]
    port: int | None = None
    user: str | None = None
    destination: str | None = None
    # The word holding our own token is the destination even if the token happens to
    # start with "-" (it must not be read as an option).
    token_word = next((i for i, a in enumerate(argv) if token and a.startswith(f"{token}@")), None)
    i = 0
    # Like OpenSSH: options may also follow the destination; the first other word after
    # it starts the remote command, which is not ours to parse.
    while i < len(argv):
        arg = argv[i]
        if i != token_word and arg.startswith("-") and len(arg) >= 2:
            letter, rest = arg[1], arg[2:]
            if letter in _SSH_ARG_OPTIONS:
                if not rest:
                    i += 1
                    rest = argv[i] if i < len(argv) else ""
                if letter == "p":
                    port = _port(rest)
                elif letter == "l":
                    user = rest
                elif letter == "o":
                    name, _, value = rest.replace("=", " ", 1).partition(" ")
                    if name.lower() == "port":
                        port = _port(value.strip())
                    elif name.lower() == "user":
                        user = value.strip()
        elif destination is None:
            destination = arg
        else:
            break
        i += 1
    if not destination:
        raise ValueError("ssh_command names no host")
    if destination.startswith("ssh://"):
        parts = urlsplit(destination)
        host = parts.hostname or ""
        port = parts.port or port
        user = parts.username or user
    else:
        at_user, sep, host = destination.rpartition("@")
        if sep:
            user = at_user
    if not host:
        raise ValueError("ssh_command names no host")
    return SshTarget(host=host, port=port or 22, username=user or token)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r} in ssh_command")
    return int(text)


class Tunnel:
    """One SSH connection to the gateway plus a loopback listener forwarding to the
    env server's port inside the sandbox."""

    def __init__(self, conn: Any, listener: Any, fingerprint: str) -> None:
        self._conn = conn
        self._listener = listener
        self.fingerprint = fingerprint
        self.local_port: int = listener.get_port()

    @classmethod
    async def open(
        cls,
        target: SshTarget,
        remote_port: int,
        *,
        known_hosts: str | None,
        connect_timeout_s: float,
        keepalive_s: float,
    ) -> Tunnel:
        import asyncssh

        conn = await asyncssh.connect(
            target.host,
            target.port,
            username=target.username,
            # No password, keys, agent or ~/.ssh/config: the token is the only credential,
            # and a user's SSH setup must not change how a worker reaches the gateway.
            password=None,
            client_keys=None,
            agent_path=None,
            config=None,
            gss_auth=False,
            known_hosts=known_hosts,
            connect_timeout=connect_timeout_s,
            login_timeout=connect_timeout_s,
            keepalive_interval=keepalive_s,
            keepalive_count_max=3,
        )
        try:
            key = conn.get_server_host_key()
            fingerprint = key.get_fingerprint("sha256") if key is not None else "unknown"
            if known_hosts is None and (target.host, target.port) not in _warned_hosts:
                _warned_hosts.add((target.host, target.port))
                log.warning(
                    "daytona: SSH gateway %s:%d host key not verified (host_key_policy="
                    "accept-any); accepted %s", target.host, target.port, fingerprint,
                )
            listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", remote_port)
        except BaseException:
            conn.close()
            raise
        return cls(conn, listener, fingerprint)

    def is_open(self) -> bool:
        return not self._conn.is_closed()

    async def close(self) -> None:
        self._listener.close()
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), 5.0)


class ProbeFailed(Exception):
    """The env did not answer `hello` (yet): refused, EOF, silence."""


class ProbeRejected(Exception):
    """The env answered `hello` with an error or garbage: retrying will not help."""


async def hello_probe(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """One wire `hello` (HUD env protocol) then `bye`; returns the hello result."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=1 << 22), timeout_s
        )
    except (OSError, TimeoutError) as exc:
        raise ProbeFailed(f"connect {host}:{port}: {exc!r}") from None
    try:
        writer.write(_HELLO)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        if not line:
            raise ProbeFailed("connection closed before hello was answered")
        try:
            message = json.loads(line)
        except ValueError:
            raise ProbeRejected(f"hello answered with non-JSON {line[:120]!r}") from None
        result = message.get("result") if isinstance(message, dict) else None
        if not isinstance(result, dict) or not isinstance(result.get("session_id"), str):
            raise ProbeRejected(f"hello answered with {line[:200]!r}")
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(_BYE)
            await writer.drain()
            await asyncio.wait_for(reader.readline(), 1.0)
        return result
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        raise ProbeFailed(f"hello through {host}:{port}: {exc!r}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
