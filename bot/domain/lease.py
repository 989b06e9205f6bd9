"""Two bot processes, one active: the lease's rules, with no clock and no database.

The active process holds a lease row (holder, epoch, expiry by the database's clock)
and renews it every `renew` seconds for `ttl` seconds. It counts itself the holder by
its own monotonic clock, from the *start* of its last successful renewal: the
database computed the expiry later than that start, so the local view always ends
first. It stops its side effects `renew` seconds before even that (`margin`), so that
one already under way (an HTTP request, an SMTP DATA) ends before any other process
can take over, which needs the database's expiry to pass.
"""

from __future__ import annotations

from dataclasses import dataclass


class LeaseLost(Exception):
    """This process is not (or no longer) the active bot: no side effect, no commit."""


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    renew_seconds: float
    ttl_seconds: float

    @property
    def margin_seconds(self) -> float:
        return self.renew_seconds

    def held(self, renewed_at: float | None, now: float) -> bool:
        """Still the holder at `now`, having last renewed (started to) at `renewed_at`."""
        if renewed_at is None:
            return False
        return now - renewed_at < self.ttl_seconds - self.margin_seconds


def timing_problem(renew_seconds: float, ttl_seconds: float) -> str | None:
    """Why these durations cannot work, in French, or None.

    Renewing at least three times per lifetime leaves room for one failed renewal and
    for the margin kept before the expiry.
    """
    if renew_seconds <= 0 or ttl_seconds <= 0:
        return "les durées doivent être positives"
    if not renew_seconds < ttl_seconds / 3:
        return (
            f"le renouvellement ({renew_seconds:g} s) doit être inférieur au tiers de la "
            f"durée du bail ({ttl_seconds:g} s)"
        )
    return None


def always_held() -> bool:
    """One process alone (no `[ha]`): it is always the active bot."""
    return True


def require_held(held: bool, what: str) -> None:
    """Raise `LeaseLost` unless held: called just before the side effect `what`."""
    if not held:
        raise LeaseLost(f"not the active bot: {what} not done")
