"""The wire's bottom layer: typed errors, 16 MiB JSON-RPC line frames, TCP streams.

Kept apart from `hud_ray.wire` (which re-exports every name here) so each file stays
small; nothing outside the wire needs to import this module directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from typing import Any

FRAME_LIMIT_BYTES = 16 * 1024 * 1024
# The StreamReader buffer must hold a whole frame plus its newline.
_READER_LIMIT = FRAME_LIMIT_BYTES + 1


class WireError(Exception):
    """Base class of every wire failure."""


class TransportError(WireError):
    """Connection refused, reset or closed by the peer."""


class WireTimeout(WireError, TimeoutError):
    """No reply in time."""

    after_accept = False  # set by readiness: the connection was accepted, then silence


class NeverAnswered(WireTimeout):
    """Readiness ran out while the env accepted connections but never answered `hello`:
    the env's own fault (a server that does not speak the protocol, or hangs), not a
    sandbox that is still booting (that refuses or closes)."""


class ProtocolError(WireError):
    """The peer sent something that is not valid protocol."""


class FrameTooLarge(ProtocolError):
    """A frame over FRAME_LIMIT_BYTES, in either direction (`outgoing`: ours, never sent)."""

    outgoing = False


class RemoteError(ProtocolError):
    """The env answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: env error {code}: {message}")
        self.method = method
        self.code = code
        self.remote_message = message


class UnencodableFrame(ProtocolError):
    """Our own message is not JSON (a set, an object, NaN): never sent, never the env's."""

    outgoing = True


def encode_frame(message: dict[str, Any]) -> bytes:
    """Compact JSON + newline; refuses frames over the limit before anything is sent."""
    try:
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise UnencodableFrame(f"cannot encode frame: {exc}") from None
    if len(data) > FRAME_LIMIT_BYTES:
        what = message.get("method", "response")
        too_large = FrameTooLarge(
            f"{what} frame is {len(data)} bytes; the limit is {FRAME_LIMIT_BYTES} bytes"
        )
        too_large.outgoing = True
        raise too_large
    return data + b"\n"


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """One frame, or None at EOF. The reader must have been opened with _READER_LIMIT."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise TransportError("connection closed in the middle of a frame") from None
        return None
    except asyncio.LimitOverrunError:
        raise FrameTooLarge(f"incoming frame exceeds {FRAME_LIMIT_BYTES} bytes") from None
    except (ConnectionError, OSError) as exc:
        raise TransportError(f"connection broke: {exc!r}") from None
    if len(line) - 1 > FRAME_LIMIT_BYTES:
        raise FrameTooLarge(f"incoming frame is {len(line) - 1} bytes")
    try:
        message = json.loads(line)
    except ValueError:
        raise ProtocolError(f"not JSON: {line[:120]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame is not a JSON object: {line[:120]!r}")
    return message


# Extra CA certificates (PEM) trusted for `tls://` endpoints besides the system's: a
# private TLS edge, or a test fake's. Forwarded to Ray workers.
TLS_CA_FILE_ENV = "HUD_RAY_TLS_CA_FILE"
_tls_contexts: dict[str, ssl.SSLContext] = {}


def tls_context() -> ssl.SSLContext:
    """A verifying client context (system CAs + $HUD_RAY_TLS_CA_FILE), built once."""
    extra = os.environ.get(TLS_CA_FILE_ENV, "")
    context = _tls_contexts.get(extra)
    if context is None:
        context = ssl.create_default_context()
        if extra:
            context.load_verify_locations(cafile=extra)
        _tls_contexts[extra] = context
    return context


async def open_stream(
    host: str, port: int, *, preamble: bytes | None = None, timeout_s: float = 10.0,
    tls: bool = False,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP connection with a frame-sized buffer (inside TLS, certificate and host name
    verified, when `tls`); sends `preamble` (gate secret) first."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, limit=_READER_LIMIT, ssl=tls_context() if tls else None,
                server_hostname=host if tls else None)
    except TimeoutError:
        raise WireTimeout(f"connect to {host}:{port} timed out after {timeout_s:.1f}s") from None
    except ssl.SSLCertVerificationError as exc:
        # Not "not ready yet": a certificate that does not verify will not start to.
        raise ProtocolError(f"TLS to {host}:{port}: {exc.verify_message or exc}") from None
    except OSError as exc:
        raise TransportError(f"connect to {host}:{port} failed: {exc}") from None
    if preamble:
        writer.write(preamble)
    return reader, writer


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of `tcp://host:port` or `tls://host:port` (see `uses_tls`)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("tcp", "tls"):
        raise ValueError(f"endpoint must be tcp://host:port or tls://host:port, got {url!r}")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint must be tcp://host:port or tls://host:port, got {url!r}")
    return host.strip("[]"), int(port)


def uses_tls(url: str) -> bool:
    """`tls://`: the stream runs inside TLS (e.g. Modal's encrypted tunnel)."""
    return url.startswith("tls://")


def _restate(exc: WireError, method: str) -> WireError:
    """The same failure, re-raised for another call (RemoteError keeps its code)."""
    if isinstance(exc, RemoteError):
        return RemoteError(exc.method, exc.code, exc.remote_message)
    return type(exc)(f"{method}: {exc}")


def _unwrap(method: str, reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply and reply["error"] is not None:
        err = reply["error"]
        if not isinstance(err, dict):
            raise ProtocolError(f"{method}: malformed error object {err!r}")
        return _raise_remote(method, err)
    result = reply.get("result")
    if not isinstance(result, dict):
        raise ProtocolError(f"{method}: reply has no result object: {_short(reply)}")
    return result


def _raise_remote(method: str, err: dict[str, Any]) -> dict[str, Any]:
    code = err.get("code")
    raise RemoteError(method, code if isinstance(code, int) else -32000, str(err.get("message")))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:200] + "…"
