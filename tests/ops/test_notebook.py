"""notebooks/quickstart.ipynb, executed top to bottom by a real Jupyter kernel.

The kernel is this venv's python (a kernelspec written for the test, so a user-level
`python3` kernelspec cannot substitute another interpreter). The notebook starts its own
local Ray through `run_distributed`; every process it starts carries a marker in its
environment, so the test can check that Ray and the env servers are gone afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the [notebook] extra")
nbclient = pytest.importorskip("nbclient", reason="needs the [notebook] extra")
pytest.importorskip("ipykernel", reason="needs the [notebook] extra")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
RL_NOTEBOOK = REPO / "examples" / "rl" / "plot.ipynb"
KERNEL = "hud-ray-test-venv"
MARKER = "HUD_RAY_NOTEBOOK_TEST"


def test_committed_notebook_is_stripped() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(code) if c["outputs"] or c["execution_count"] is not None]
    assert not dirty, f"code cells {dirty} carry outputs: commit the notebook stripped"


def _write_kernelspec(root: Path, env: dict[str, str]) -> None:
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hud_ray test venv",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def _marked_processes(marker: str) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == marker:
                alive.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return alive


def _text(cell: dict) -> str:
    return "".join(o.get("text", "") for o in cell["outputs"] if o["output_type"] == "stream"
                   and o.get("name") == "stdout")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quickstart_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = uuid.uuid4().hex
    _write_kernelspec(tmp_path / "jupyter", {
        MARKER: marker,
        "RAY_AUTH_MODE": "disabled",
        # A Ray of its own: never join a cluster that happens to run on this machine.
        "RAY_ADDRESS": "local",
        "HUD_RAY_STATE_DIR": os.environ["HUD_RAY_STATE_DIR"],
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    })
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"  # the kernel's cwd: the notebook writes runs/ here
    work.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, startup_timeout=120,
        resources={"metadata": {"path": str(work)}},
    )
    t0 = time.monotonic()
    client.execute()  # raises CellExecutionError (with the traceback) on the first error
    elapsed = time.monotonic() - t0
    print(f"notebook executed in {elapsed:.1f}s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [(i, o) for i, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"error outputs: {errors}"
    assert all(c.execution_count is not None for c in code), "a code cell did not run"

    plot_cells = [c for c in code if "plt.show()" in c.source]
    assert len(plot_cells) >= 5, "the notebook lost its plots"
    for cell in plot_cells:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"plot cell produced no image/png:\n{cell.source[:200]}"

    outputs = "\n".join(_text(c) for c in code)
    assert "120 rollouts -> " in outputs  # 60 rows x 2 repeats, all rows back
    assert "attach mid-run: state='running'" in outputs
    assert "state='finished' rows=36" in outputs
    runs = list((work / "runs" / "quickstart").iterdir())
    assert sum((r / "manifest.json").is_file() for r in runs) == 3, runs

    # ray.shutdown() in the last cell + kernel shutdown: nothing the notebook started lives on.
    deadline = time.monotonic() + 30
    while (alive := _marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"left running after the notebook: {[p.name() for p in alive]}"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_rl_notebook_executes_a_short_grpo_run(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/rl/plot.ipynb as a user runs it (from the repository root), with 4 steps
    instead of 50 and the runs written under tmp_path: the loop runs, the table and the
    plots come out, and its staleness assertion holds."""
    marker = uuid.uuid4().hex
    _write_kernelspec(tmp_path / "jupyter", {
        MARKER: marker, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local",
        "HUD_RAY_STATE_DIR": os.environ["HUD_RAY_STATE_DIR"],
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    })
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(RL_NOTEBOOK, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code" and "grpo.main" in c.source)
    short = first.source.replace('"--steps", "50"', '"--steps", "4"').replace(
        '"--out", "runs"', f'"--out", {str(tmp_path / "runs")!r}')
    assert short.count(str(tmp_path)) == 1 and '"4"' in short, "the notebook's call changed"
    first.source = short + "\nimport ray\n"
    nb.cells.append(nbformat.v4.new_code_cell("ray.shutdown()"))
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    plots = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert plots, "the plot cell drew nothing"
    table = next(o["data"]["text/plain"] for c in code for o in c.outputs
                 if "reward_mean" in o.get("data", {}).get("text/plain", ""))
    assert "lag_max" in table and len(table.splitlines()) == 5  # header + steps 0-3
    metrics = list((tmp_path / "runs").glob("*/rl/metrics.jsonl"))
    assert len(metrics) == 1 and len(metrics[0].read_text().splitlines()) == 4
    deadline = time.monotonic() + 30
    while (alive := _marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"left running after the notebook: {[p.name() for p in alive]}"
