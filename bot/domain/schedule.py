"""When a periodic job is due (pure): daily at an hour, or weekly on a day at an hour.

A job records the Paris date of the occurrence it last ran for. It is due when
the latest occurrence (at or before `now`) is later than that: a bot that was
down at 3:00 runs the night's job when it comes back, once.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from bot.domain.calendar import PARIS


def latest_daily(now: datetime, hour: int) -> date:
    local = now.astimezone(PARIS)
    today = local.date()
    return today if local.hour >= hour else today - timedelta(days=1)


def latest_weekly(now: datetime, weekday: int, hour: int) -> date:
    """`weekday`: 0 = Monday … 6 = Sunday."""
    local = now.astimezone(PARIS)
    day = local.date() - timedelta(days=(local.weekday() - weekday) % 7)
    if day == local.date() and local.hour < hour:
        day -= timedelta(days=7)
    return day


def due(last_run: date | None, occurrence: date) -> bool:
    return last_run is None or last_run < occurrence
