"""The lease's timing rules (bot.domain.lease): pure arithmetic, no clock."""

from __future__ import annotations

from bot.domain.lease import LeaseTiming, timing_problem


def test_the_holder_stops_one_renewal_period_before_its_lease_can_expire() -> None:
    timing = LeaseTiming(renew_seconds=1, ttl_seconds=5)
    assert timing.held(100.0, 100.0)
    assert timing.held(100.0, 103.99)
    assert not timing.held(100.0, 104.0)  # the database's expiry is at 105 at the earliest
    assert not timing.held(None, 100.0)  # never renewed: not the holder


def test_the_timing_is_refused_unless_the_renewal_is_under_a_third_of_the_ttl() -> None:
    assert timing_problem(1, 5) is None
    assert timing_problem(1, 3.01) is None
    problem = timing_problem(1, 3)
    assert problem is not None and "tiers" in problem
    assert timing_problem(0, 5) is not None
