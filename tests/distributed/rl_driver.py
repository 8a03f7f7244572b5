"""A trainer process for the driver-restart test: submits `total` groups (those the group
log does not hold yet), takes every group, appends `took <id> <reemitted>` then, after
`ack`, `acked <id>` to `<out>/trainer.log` (each line fsynced). Started again with the
same arguments after a SIGKILL, it resumes the run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hud_ray.rl import RolloutSource


def _note(fh, line: str) -> None:
    fh.write(line + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def main(out: str, account: str, total: int) -> None:
    resume = (Path(out) / "rl-restart" / "manifest.json").exists()
    source = RolloutSource("tests/fakes/rl_agents.py:coin_agent", provider="sim", out=out,
                           run_id="rl-restart", resume=resume, concurrency=8, workers=2,
                           provider_options={"account": account, "flush_s": "0"},
                           retry_backoff_s=0.05,
                           governor={"run_lease_s": 6, "reap_interval_s": 0.5})
    for i in range(len(source.log.groups), total):
        source.submit({"env": "sim", "id": "t", "slug": f"t{i}",
                       "args": {"answer": "a", "think_s": 0.3}}, n=3)
    source.close(timeout_s=0)  # no more groups; the ones submitted still finish
    with (Path(out) / "trainer.log").open("a") as fh:
        for group in source:
            _note(fh, f"took {group.group_id} {group.reemitted}")
            source.ack(group.group_id)
            _note(fh, f"acked {group.group_id}")
    print("done", source.stats(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
