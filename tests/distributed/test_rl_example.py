"""examples/rl/grpo.py, a few steps of it, through its own main(); the notebook is
committed stripped."""

from __future__ import annotations

import json
import sys

import pytest

from tests.distributed.conftest import REPO

EXAMPLE = REPO / "examples" / "rl"


@pytest.mark.slow
def test_grpo_example_runs_steps_under_the_staleness_bound(ray_local, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import grpo

    path = grpo.main(["--steps", "4", "--groups", "2", "--n", "4", "--concurrency", "8",
                      "--out", str(tmp_path)])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3] and records[-1]["version"] == 4
    assert all(r["lag_max"] <= 1 for r in records)
    assert all(0.0 <= r["reward_mean"] <= 1.0 for r in records)
    sys.modules.pop("grpo", None)


def test_the_rl_notebook_is_committed_stripped():
    nb = json.loads((EXAMPLE / "plot.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and not any(c["outputs"] or c["execution_count"] is not None for c in code)
