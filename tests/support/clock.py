"""An injected clock for tests that move time (reminders, retention, retries)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    """A fixed time (`at`), or the real time shifted by `offset` when `at` is None."""

    def __init__(self, at: datetime | None, offset: timedelta = timedelta(0)) -> None:
        self.at = at
        self.offset = offset

    def now(self) -> datetime:
        return self.at if self.at is not None else datetime.now(UTC) + self.offset
