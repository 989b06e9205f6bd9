"""The only place that reads the wall clock; tests inject their own."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.ports import Clock

__all__ = ["Clock", "SystemClock"]


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
