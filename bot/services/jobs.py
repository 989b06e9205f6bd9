"""Periodic jobs on the bot's loop, with the injected clock.

Each job records in `bot_state` the Paris date of the occurrence it last ran
for; `tick()` runs whatever is due (a bot that was down runs a missed job once
when it comes back). The loop only decides *when to look*; tests call `tick()`
after moving their clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime

from bot.domain import schedule
from bot.services.clock import Clock
from bot.services.failures import stop_if_requested
from bot.store.db import Store

log = logging.getLogger(__name__)

POLL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    occurrence: Callable[[datetime], date]  # the latest occurrence at or before now
    run: Callable[[], Awaitable[object]]


class Jobs:
    def __init__(self, *, store: Store, clock: Clock, jobs: list[Job]) -> None:
        self.store = store
        self.clock = clock
        self.jobs = jobs

    async def tick(self) -> list[str]:
        """Run the jobs that are due; returns their names."""
        ran = []
        for job in self.jobs:
            now = self.clock.now()
            occurrence = job.occurrence(now)
            key = f"jobs.{job.name}.last"
            async with self.store.transaction() as tx:
                raw = await tx.get_state(key)
            last = date.fromisoformat(raw) if raw else None
            if not schedule.due(last, occurrence):
                continue
            log.info("job %s: running (occurrence %s)", job.name, occurrence)
            try:
                await job.run()
            except Exception as exc:
                stop_if_requested(exc)  # a failed cleanup after the stop: the stop goes on
                log.exception("job %s failed; it will run again at the next tick", job.name)
                continue
            async with self.store.transaction() as tx:
                await tx.set_state(key, occurrence.isoformat())
            ran.append(job.name)
        return ran

    async def run(self, *, poll_seconds: float = POLL_SECONDS) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:
                stop_if_requested(exc)  # a failed cleanup after the stop: the stop goes on
                log.exception("jobs: tick failed")
            await asyncio.sleep(poll_seconds)
