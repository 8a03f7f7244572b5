"""Readiness = a wire `hello` answered (stdlib; providers never import hud_ray).

An open port proves little: Modal's gate accepts before the env server serves, its relay
before the sandbox is scheduled, and on a host network the port may even belong to someone
else. Only a `hello` reply with a session id shows that the env server works (used by the
modal and docker providers; `preamble` is the Modal gate's secret frame, b"" elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from typing import Any

HELLO = b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{}}\n'
BYE = b'{"jsonrpc":"2.0","id":2,"method":"bye","params":{}}\n'
_REPLY_LIMIT = 1 << 20
# The same variable as hud_ray.wire_frames.TLS_CA_FILE_ENV (providers never import hud_ray).
TLS_CA_FILE_ENV = "HUD_RAY_TLS_CA_FILE"


def tls_context() -> ssl.SSLContext:
    """Verifying client context: the system's CAs plus $HUD_RAY_TLS_CA_FILE if set."""
    context = ssl.create_default_context()
    extra = os.environ.get(TLS_CA_FILE_ENV)
    if extra:
        context.load_verify_locations(cafile=extra)
    return context


class NotYet(Exception):
    """Refused, closed or silent: the sandbox may still be starting."""


class WrongAnswer(Exception):
    """Something answered, but not an env server: waiting longer will not help."""


async def hello(host: str, port: int, preamble: bytes, timeout_s: float,
                tls: ssl.SSLContext | None = None) -> dict[str, Any]:
    """One connect (inside TLS with `tls`) + gate frame + `hello`; the reply, or NotYet /
    WrongAnswer."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=_REPLY_LIMIT, ssl=tls,
                                    server_hostname=host if tls else None), timeout_s
        )
    except ssl.SSLCertVerificationError as exc:
        raise WrongAnswer(f"TLS to {host}:{port}: {exc.verify_message or exc}") from None
    except (TimeoutError, OSError) as exc:
        raise NotYet(f"connect {host}:{port}: {exc!r}") from None
    try:
        writer.write(preamble + HELLO)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
    except TimeoutError:
        raise NotYet(f"no hello reply within {timeout_s:.1f}s") from None
    except (OSError, ValueError) as exc:
        raise NotYet(f"connection broke: {exc!r}") from None
    else:
        if not line:
            raise NotYet("closed before answering hello (env not up yet, or gate refused)")
        try:
            reply = json.loads(line)
        except ValueError:
            raise WrongAnswer(f"not an env server: {line[:80]!r}") from None
        if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
            raise WrongAnswer(f"not a JSON-RPC reply: {line[:80]!r}")
        if "result" in reply and not isinstance((reply["result"] or {}).get("session_id"), str):
            raise WrongAnswer(f"hello reply without session_id: {line[:80]!r}")
        # A JSON-RPC error is still an env answering: the rollout's own hello will report it.
        try:
            writer.write(BYE)
            await writer.drain()
        except OSError:
            pass
        return reply
    finally:
        writer.close()
