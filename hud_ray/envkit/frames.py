"""Line-delimited JSON-RPC 2.0 frames, at most 16 MiB each (hud's control-channel limit)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

FRAME_LIMIT_BYTES = 16 * 1024 * 1024


class FrameTooLarge(ValueError):
    pass


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > FRAME_LIMIT_BYTES:
        raise FrameTooLarge(f"frame is {len(data)} bytes; limit is {FRAME_LIMIT_BYTES}")
    return data + b"\n"


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise FrameTooLarge(f"incoming frame exceeds {FRAME_LIMIT_BYTES} bytes") from None
    except (ConnectionError, OSError):
        return None
    if len(line) - 1 > FRAME_LIMIT_BYTES:
        raise FrameTooLarge(f"incoming frame is {len(line) - 1} bytes; limit is {FRAME_LIMIT_BYTES}")
    message = json.loads(line)  # ValueError → caller answers -32700 and closes
    if not isinstance(message, dict):
        raise ValueError("frame is not a JSON object")
    return message


def reply(msg_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def error(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}
