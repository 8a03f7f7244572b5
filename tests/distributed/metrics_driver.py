"""Driver for the metrics test: a private Ray with a known metrics export port, a small
sim run, then the Prometheus text the node's metrics agent serves, printed once the run's
counters show up (bounded wait: metrics are exported every few seconds)."""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
import uuid

import ray

from hud_ray.api import run_distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(tasks: str, out: str) -> int:
    port = free_port()
    ray.init(include_dashboard=False, _metrics_export_port=port, num_cpus=2,
             log_to_driver=False)
    run_distributed(tasks, "nop", provider="sim", concurrency=4, workers=1, out=out,
                    progress=False, account=f"metrics-{uuid.uuid4().hex[:6]}")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            body = b""
        lines = [line for line in body.decode().splitlines()
                 if line.startswith("ray_hud_ray_") and not line.startswith("#")]
        if any("rollouts_total" in line for line in lines) and any(
                "governor_live" in line for line in lines):
            print(json.dumps(lines))
            return 0
        time.sleep(1)
    print(json.dumps([]))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
