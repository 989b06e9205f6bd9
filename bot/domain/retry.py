"""When to try a failed piece of work again, and when to give up (pure).

Two kinds of failure:

* the work's own fault (a file whose media cannot be fetched, a malformed value, a bug
  met by one event): each attempt counts, with a doubling delay, and after the budget
  the work is given up — audited and, where a participant should know, told;
* an outage (the homeserver cannot be reached at all): nothing is counted, the work
  waits at most `outage_cap_seconds` and tries again, for as long as the outage lasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8
    base_seconds: float = 30.0
    cap_seconds: float = 3600.0
    outage_cap_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("at least one attempt")
        if not 0 < self.base_seconds <= self.cap_seconds:
            raise ValueError("0 < base_seconds <= cap_seconds")


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int  # counted failures so far
    at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    attempts: int


def after_failure(
    policy: RetryPolicy, attempts_before: int, now: datetime, *, outage: bool
) -> Retry | GiveUp:
    """What to do after one more failure, `attempts_before` counted failures so far."""
    if outage:
        delay = min(policy.base_seconds * 2 ** min(attempts_before, 16), policy.outage_cap_seconds)
        return Retry(attempts_before, now + timedelta(seconds=delay))
    attempts = attempts_before + 1
    if attempts >= policy.attempts:
        return GiveUp(attempts)
    delay = min(policy.base_seconds * 2 ** (attempts - 1), policy.cap_seconds)
    return Retry(attempts, now + timedelta(seconds=delay))
