"""Live smoke test against the real Daytona service: create → env server in a session →
SSH access → asyncssh forward → wire `hello` through it → destroy → nothing left by label.

Runs only with DAYTONA_API_KEY set (DAYTONA_API_URL / DAYTONA_TARGET honoured). The sandbox
starts from Daytona's default snapshot (or DAYTONA_LIVE_SNAPSHOT) and serves a stdlib hello
server passed in an env var, so no image build is needed.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from providers import LABEL_RUN, SandboxSpec
from providers.daytona import DaytonaProvider
from providers.daytona.tunnel import hello_probe

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("DAYTONA_API_KEY"),
        reason="live Daytona test: set DAYTONA_API_KEY (and optionally DAYTONA_API_URL, "
        "DAYTONA_TARGET, DAYTONA_LIVE_SNAPSHOT) to run it",
    ),
]

# A minimal HUD-protocol server: answers `hello` and `bye`, nothing else.
PROBE_SERVER = r"""
import asyncio, json, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
async def handle(reader, writer):
    while line := await reader.readline():
        msg = json.loads(line)
        result = ({"session_id": "live", "env": {"name": "probe"}, "bindings": []}
                  if msg.get("method") == "hello" else {"goodbye": True})
        writer.write((json.dumps({"jsonrpc": "2.0", "id": msg.get("id"), "result": result})
                      + "\n").encode())
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(f"HUD_SERVE_PORT={port}", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def test_live_daytona_round_trip() -> None:
    run_id = f"live-{uuid.uuid4().hex[:8]}"
    provider = DaytonaProvider(
        snapshot=os.environ.get("DAYTONA_LIVE_SNAPSHOT") or None,
        workdir=None,
        command='python3 -c "$HUD_RAY_PROBE" --host 127.0.0.1 --port {port}',
        env_vars={"HUD_RAY_PROBE": PROBE_SERVER},
        create_timeout_s=180,
    )

    async def main():
        handle = await provider.create(
            SandboxSpec(name=f"hudray-{run_id}", lifetime_s=600), {LABEL_RUN: run_id}
        )
        try:
            endpoint = await provider.ready(handle, 180)
            host, port = endpoint.host_port
            hello = await hello_probe(host, port, 10)
            assert hello["env"] == {"name": "probe"}
            assert handle.data["ssh_host_key_fingerprint"].startswith("SHA256:")
            assert [h.sandbox_id for h in await provider.list({LABEL_RUN: run_id})] == [
                handle.sandbox_id
            ]
        finally:
            await provider.destroy(handle)
        assert await provider.list({LABEL_RUN: run_id}) == []
        await provider.close()

    asyncio.run(main())
