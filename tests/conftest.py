"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py or tests/fakes/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO / "examples" / "demo"
DEMO_ENV = DEMO_DIR / "env.py"
DEMO_TASKS = DEMO_DIR / "tasks.jsonl"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own provider state dir (ledgers), never the user's."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("HUD_RAY_STATE_DIR", str(state))
    monkeypatch.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
    yield state
    # Workers kept for a later run (hud_ray.pool) are keyed by this test's state dir, so
    # no other test could reuse them: end them, with their providers' processes.
    pool = sys.modules.get("hud_ray.pool")
    if pool is not None:
        pool.shutdown()


@pytest.fixture
def demo_env() -> Path:
    return DEMO_ENV


@pytest.fixture
def demo_tasks() -> Path:
    return DEMO_TASKS
