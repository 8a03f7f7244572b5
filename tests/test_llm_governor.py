"""The endpoint governor's admission rules, without Ray, on a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from hud_ray.llm_governor import LlmGovernorImpl, check_llm_limits, endpoint_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def governor(**policy):
    clock = Clock()
    return LlmGovernorImpl("k", policy, clock=clock), clock


def test_rpm_paces_requests_evenly():
    gov, clock = governor(rpm=600, pace=1.0)  # one every 0.1 s
    assert gov.wait_needed() == 0
    gov.admit()
    assert gov.wait_needed() == pytest.approx(0.1)
    clock.now += 0.1
    assert gov.wait_needed() == 0


def test_max_concurrent_waits_for_a_release():
    gov, _ = governor(max_concurrent=2)
    gov.admit()
    gov.admit()
    assert gov.wait_needed() == float("inf")
    gov.release(tokens=10, status=200)
    assert gov.wait_needed() == 0


def test_a_429_cuts_the_rate_and_a_long_retry_after_holds_everyone_then_recovers():
    gov, clock = governor(rpm=600, increase_per_s=60, decrease_factor=0.5, pause_all_after_s=2)
    gov.admit()
    gov.release(status=429, retry_after_s=2.0)
    assert gov.rate_rpm == 300
    assert gov.wait_needed() == pytest.approx(2.0)  # not before Retry-After
    clock.now += 2.0
    assert gov.wait_needed() == 0
    clock.now += 5.0  # quiet: +60 rpm per second, back to the configured 600
    gov.wait_needed()
    assert gov.rate_rpm == 600
    assert gov.snapshot()["rate_limited"] == 1


def test_a_burst_of_429s_cuts_the_rate_once():
    gov, clock = governor(rpm=600, decrease_factor=0.5, pace=1.0)
    for _ in range(4):  # four requests in flight meet the same full window
        gov.admit()
    for _ in range(4):
        gov.release(status=429, retry_after_s=1.0)
    assert gov.rate_rpm == pytest.approx(300, rel=0.01)
    clock.now += 1.0
    gov.admit()
    gov.release(status=429, retry_after_s=1.0)  # a later burst: cut again
    assert gov.rate_rpm < 300


def test_a_short_retry_after_slows_the_others_without_stopping_them():
    gov, clock = governor(rpm=600, decrease_factor=0.5, pace=1.0)  # pause_all_after_s=5
    gov.admit()
    clock.now += 0.1
    gov.release(status=429, retry_after_s=1.0)  # the rate-limited request waits it out
    assert gov.rate_rpm == pytest.approx(300, rel=0.01)
    assert gov.wait_needed() == 0  # the others: paced at the cut rate, not held


def test_a_late_wake_up_keeps_its_place_in_the_schedule():
    gov, clock = governor(rpm=600, pace=1.0)  # slots every 0.1 s
    gov.admit()  # slot 0 at t; next at t + 0.1
    clock.now += 0.13  # woke 30 ms late for slot 1
    assert gov.wait_needed() == 0
    gov.admit()
    assert gov.wait_needed() == pytest.approx(0.07)  # slot 2 stays at t + 0.2


def test_requests_are_paced_a_little_under_the_limit_by_default():
    gov, _ = governor(rpm=600)
    gov.admit()
    assert gov.wait_needed() == pytest.approx(0.1 / 0.975)


def test_a_503_without_retry_after_pauses_the_default_time():
    gov, _ = governor(rpm=60, default_retry_after_s=0.5, pause_all_after_s=0.5)
    gov.admit()
    gov.release(status=503)
    assert gov.wait_needed() >= 0.5


def test_tpm_holds_requests_until_the_window_frees():
    gov, clock = governor(tpm=1000)
    gov.admit()
    gov.release(tokens=1000, status=200)
    assert gov.wait_needed() == pytest.approx(60.0)
    clock.now += 60.0
    assert gov.wait_needed() == 0


def test_acquire_returns_the_time_waited():
    async def main():
        gov = LlmGovernorImpl("k", {"max_concurrent": 1})
        await gov.acquire()
        waiter = asyncio.create_task(gov.acquire())
        await asyncio.sleep(0)  # let it block on the slot
        assert not waiter.done()
        gov.release(status=200)
        return await waiter

    assert asyncio.run(main()) >= 0


def test_limits_are_validated_naming_the_setting():
    assert check_llm_limits({"rpm": "600"}) == {"rpm": 600.0}
    assert check_llm_limits(None) is None
    with pytest.raises(ValueError, match=r"'rpm'.*greater than 0"):
        check_llm_limits({"rpm": 0})
    with pytest.raises(ValueError, match=r"'rps'.*known: max_concurrent, rpm, tpm"):
        check_llm_limits({"rps": 5})


def test_one_governor_per_endpoint_and_model():
    assert endpoint_key("http://h/v1/", "m") == endpoint_key("http://h/v1", "m")
    assert endpoint_key("http://h/v1", "m") != endpoint_key("http://h/v1", "n")
