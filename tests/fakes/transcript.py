"""One fixed conversation with an env server serving tests/fakes/envs/dual.py.

`conversation(port)` plays the same raw frames against any server and returns what came
back, normalised (session ids, ports, schema details dropped). test_envkit checks envkit's
answers against EXPECTED; test_hud_interop checks hud 0.6.21's own server against the very
same EXPECTED — so envkit behaves like hud wherever the protocol is observable.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from .procs import RawConn

Seen = list[Any]


def _norm(frame: dict[str, Any] | None, sids: dict[str, str]) -> Any:
    if frame is None:
        return "EOF"
    if "error" in frame:
        return {"id": frame.get("id"), "error": frame["error"]["code"]}
    text = json.dumps(frame["result"])
    for sid in re.findall(r'"(sess-[0-9a-f]+)"', text):
        sids.setdefault(sid, f"SID{len(sids) + 1}")
        text = text.replace(sid, sids[sid])
    text = re.sub(r"tcp://127\.0\.0\.1:\d+", "tcp://127.0.0.1:PORT", text)
    result = json.loads(text)
    if "tasks" in result:  # argument schemas differ in detail (pydantic vs stdlib)
        result["tasks"] = sorted((t["id"], t["description"]) for t in result["tasks"])
    return {"id": frame.get("id"), "result": result}


async def conversation(port: int) -> dict[str, Seen]:
    sids: dict[str, str] = {}
    out: dict[str, Seen] = {}

    async def calls(conn: RawConn, *steps: tuple[str, Any]) -> Seen:
        seen = []
        for method, params in steps:
            conn._ids += 1
            frame: dict[str, Any] = {"jsonrpc": "2.0", "id": conn._ids, "method": method}
            if params is not None:
                frame["params"] = params
            await conn.send(frame)
            seen.append(_norm(await conn.recv(), sids))
        return seen

    a = await RawConn.open(port)
    out["session"] = await calls(a, ("hello", {}))
    own_sid = next(iter(sids))
    out["session"] += await calls(
        a,
        ("tasks.list", {}),
        ("tasks.start", {"id": "count", "args": {"text": "mississippi", "letter": "s"}}),
        ("hello", {"session_id": own_sid}),  # the heartbeat: its own session id
        ("tasks.grade", {"answer": "4"}),
        ("tasks.grade", {"answer": "4"}),  # nothing left to grade
        ("tasks.start", {"id": "count", "args": {"bogus": 1}}),
        ("tasks.start", {"id": "nope", "args": {}}),
        ("tasks.start", {"id": 5}),
        ("tasks.start", {"id": "count", "args": []}),
        ("tasks.start", {"id": "count", "args": None}),
        ("tasks.grade", {"answer": "3"}),  # args: null means defaults (banana, a)
        ("tasks.start", {"id": "add", "args": {"a": "2", "b": 3}}),  # "2" → int 2
        ("tasks.grade", {"answer": "5"}),
        ("tasks.start", {"id": "sum_list", "args": {"numbers": "[1, 2, 3]"}}),
        ("tasks.grade", {"answer": "6"}),
        ("tasks.start", {"id": "truthy"}),
        ("tasks.grade", {"answer": "yes"}),
        ("tasks.start", {"id": "rich", "args": {}}),
        ("tasks.grade", {"answer": "hi"}),
        ("tasks.start", {"id": "nan", "args": {}}),
        ("tasks.grade", {"answer": "x"}),
        ("tasks.start", {"id": "fail_start", "args": {}}),
        ("hello", {"session_id": 5}),
        ("hello", {"session_id": "sess-00000000"}),
        ("hello", {"workspace_routes": "nope"}),
        ("tasks.frobnicate", {}),
        ("tasks.cancel", {}),
    )
    # A notification (no id) gets no answer: the next frame is the cancel's reply.
    await a.send({"jsonrpc": "2.0", "method": "tasks.list", "params": {}})
    out["notification"] = await calls(a, ("tasks.cancel", {}))
    # A grade that never finishes: other calls are refused, cancel interrupts it.
    out["interrupt"] = await calls(a, ("tasks.start", {"id": "hang", "args": {}}))
    await a.send({"jsonrpc": "2.0", "id": 100, "method": "tasks.grade", "params": {"answer": 1}})
    out["interrupt"] += await calls(a, ("tasks.list", {}))
    await a.send({"jsonrpc": "2.0", "id": 101, "method": "tasks.cancel", "params": {}})
    out["interrupt"] += [_norm(await a.recv(), sids), _norm(await a.recv(), sids)]
    out["bye"] = await calls(a, ("bye", {}))
    out["bye"].append(_norm(await a.recv(), sids))
    a.close()

    # EOF instead of bye (hud's client never says bye): the started task parks, and a
    # new connection resumes it by session id.
    b = await RawConn.open(port)
    out["park"] = await calls(b, ("hello", {}), ("tasks.start", {"id": "count", "args": {}}))
    parked_sid = next(k for k, v in sids.items() if v == out["park"][0]["result"]["session_id"])
    b.close()
    await b.at_eof()
    c = await RawConn.open(port)
    out["resume"] = await calls(c, ("hello", {"session_id": parked_sid}),
                                ("tasks.grade", {"answer": "3"}))
    # One parked task and no session id: a plain grade adopts it.
    d = await RawConn.open(port)
    out["adopt"] = await calls(d, ("hello", {}), ("tasks.start", {"id": "count", "args": {}}))
    d.close()
    await d.at_eof()
    e = await RawConn.open(port)
    out["adopt"] += await calls(e, ("tasks.grade", {"answer": "3"}),
                                ("tasks.grade", {"answer": "3"}))
    # A live session cannot be taken over.
    out["live"] = await calls(c, ("hello", {"session_id": parked_sid}))
    live_sid = next(k for k, v in sids.items() if v == out["live"][0]["result"]["session_id"])
    out["live"] += await calls(e, ("hello", {"session_id": live_sid}))
    for conn in (c, e):
        conn.close()

    # Capability streams: the first frame routes the connection.
    t = await RawConn.open(port)
    out["tunnel"] = await calls(t, ("tunnel.open", {"capability": "echo"}))
    await t.send_raw(b"raw bytes\n")
    out["tunnel"].append((await asyncio.wait_for(t.reader.readline(), 10)).decode())
    t.close()
    for params in ({"capability": "nope"}, {"capability": 5}):
        u = await RawConn.open(port)
        out["tunnel"] += await calls(u, ("tunnel.open", params))
        u.close()
    return out


_SID = "SID1"
_HELLO = {"session_id": _SID, "env": {"name": "dual", "version": "1.2.3"},
          "bindings": [{"name": "echo", "protocol": "echo/1", "url": "tcp://127.0.0.1:PORT",
                        "params": {}}]}


def _ok(msg_id: int, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": msg_id, "result": result}


def _err(msg_id: int | None, code: int) -> dict[str, Any]:
    return {"id": msg_id, "error": code}


EXPECTED: dict[str, Seen] = {
    "session": [
        _ok(1, _HELLO),
        _ok(2, {"tasks": sorted([
            ("add", "add two integers"), ("count", "count a letter"),
            ("fail_start", "raises before the prompt"), ("hang", "grading never finishes"),
            ("nan", "grades with NaN"), ("rich", "message prompt, dict grade"),
            ("sum_list", "sum a list"), ("truthy", "grades with a bool")])}),
        _ok(3, {"prompt": "How many times does the letter 's' appear in 'mississippi'?"}),
        _ok(4, _HELLO),
        _ok(5, {"score": 1.0}),
        _err(6, -32600),
        _err(7, -32000),  # bad args: TypeError inside the task
        _err(8, -32602),
        _err(9, -32602),
        _err(10, -32602),
        _ok(11, {"prompt": "How many times does the letter 'a' appear in 'banana'?"}),
        _ok(12, {"score": 1.0}),
        _ok(13, {"prompt": "Compute 2 + 3."}),
        _ok(14, {"score": 1.0}),
        _ok(15, {"prompt": "Sum [1, 2, 3]."}),
        _ok(16, {"score": 1.0}),
        _ok(17, {"prompt": "Say yes."}),
        _ok(18, {"score": 1.0}),
        _ok(19, {"prompt": [{"role": "user", "content": "Say hi."}]}),
        _ok(20, {"score": 0.5, "info": {"answer": "hi"}}),
        _ok(21, {"prompt": "Say anything."}),
        _err(22, -32000),  # non-finite score
        _err(23, -32000),
        _err(24, -32602),
        _err(25, -32600),
        _err(26, -32602),
        _err(27, -32601),
        _ok(28, {"cancelled": True}),
    ],
    "notification": [_ok(29, {"cancelled": True})],
    "interrupt": [
        _ok(30, {"prompt": "Say anything."}),
        _err(31, -32600),  # a task call is still running
        _err(100, -32000),  # the grade, interrupted
        _ok(101, {"cancelled": True}),
    ],
    "bye": [_ok(32, {"goodbye": True}), "EOF"],
    "park": [_ok(1, {**_HELLO, "session_id": "SID2"}),
             _ok(2, {"prompt": "How many times does the letter 'a' appear in 'banana'?"})],
    "resume": [_ok(1, {**_HELLO, "session_id": "SID2"}), _ok(2, {"score": 1.0})],
    "adopt": [_ok(1, {**_HELLO, "session_id": "SID3"}),
              _ok(2, {"prompt": "How many times does the letter 'a' appear in 'banana'?"}),
              _ok(1, {"score": 1.0}),
              _err(2, -32600)],
    "live": [_ok(3, {**_HELLO, "session_id": "SID2"}), _err(3, -32600)],
    "tunnel": [_ok(1, {"capability": "echo"}), "echo:raw bytes\n", _err(1, -32000),
               _err(1, -32602)],
}
