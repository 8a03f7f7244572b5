"""Progress: the rate is recent, and there is no rate (so no ETA) until it means something."""

from __future__ import annotations

from hud_ray import progress as progress_module
from hud_ray.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(monkeypatch, total=2400):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    return Progress(total, enabled=False), clock


def _finish(p: Progress, clock: Clock, n: int, every_s: float) -> None:
    for _ in range(n):
        clock.now += every_s
        p.update({"status": "ok", "reward": 1.0})


def test_first_row_after_startup_gives_no_rate_and_no_eta(monkeypatch):
    p, clock = _progress(monkeypatch)
    clock.now += 5.0  # Ray's start-up
    p.update({"status": "ok", "reward": 1.0})
    assert p.rate() is None and p.eta() == ""
    assert "eta" not in p.line() and "-/s" in p.line()


def test_rate_follows_recent_throughput_and_eta_follows_it(monkeypatch):
    p, clock = _progress(monkeypatch)
    _finish(p, clock, 40, every_s=0.5)  # 2/s
    assert abs(p.rate() - 2.0) < 0.1
    assert p.eta() == f"eta {(2400 - 40) / p.rate():.0f}s"
    _finish(p, clock, 400, every_s=0.1)  # it speeds up: after 30 s the slow part is gone
    assert abs(p.rate() - 10.0) < 0.5


def test_a_burst_of_rows_at_one_instant_is_not_a_rate(monkeypatch):
    p, clock = _progress(monkeypatch)
    _finish(p, clock, 20, every_s=0.0)  # one batched reply
    assert p.rate() is None
