"""The one shape of a background worker: run a step when woken, or after an idle time;
after a failure, wait with a doubling delay (the work stays queued in the database)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bot.services.failures import (
    database_unavailable,
    describe,
    homeserver_outage,
    stop_requested,
)
from bot.services.waits import woken_within

log = logging.getLogger(__name__)


class Wakeup:
    """What wakes a worker. Made before the worker's owner when another part, built
    earlier, must be able to wake it (the outbox wakes the guard, which sends through
    the outbox): both get the same `Wakeup`, and nobody holds a reference to the other."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self) -> None:
        await self._event.wait()


class Worker:
    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        *,
        idle_seconds: float = 30.0,
        max_backoff_seconds: float = 60.0,
        wakeup: Wakeup | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self.idle_seconds = idle_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._wake = wakeup or Wakeup()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = 1.0
        while True:
            self._wake.clear()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop_requested():
                    # The stop came, and cleaning up failed (a rollback on a busy or lost
                    # database): not a failure of the work, the stop goes on.
                    log.warning("%s: stopping (%s)", self.name, describe(exc))
                    raise asyncio.CancelledError from exc
                # Homeserver, relay or database unavailable, or a bug: the work stays
                # queued; the worker lives on.
                if database_unavailable(exc) or homeserver_outage(exc):
                    log.warning("%s: %s; retry in %.0f s", self.name, describe(exc), delay)
                else:
                    log.exception("%s: unexpected failure; retry in %.0f s", self.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_seconds)
                continue
            delay = 1.0
            await woken_within(self._wake.wait(), self.idle_seconds)
