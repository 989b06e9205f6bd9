"""Two bot processes on one PostgreSQL database, one active: the lease, kept.

Design (issue 14; `../shared/reference/production.md`, two processes and one active):

- One lease row (`bot.store.lease`): holder, a strictly increasing epoch, an expiry by
  the database's clock. A process waits as the *standby* until the lease is free or
  expired, then takes it (a new epoch) and starts exactly as a restart does.
- The fence: every transaction of the `Store` checks the epoch first and holds the
  row against a takeover until it ends (`bot.store.db`); a stale holder's commit fails.
  A takeover that waits for a frozen holder's open transaction terminates that
  holder's connections (they carry the holder as `application_name`).
- `held()` by this process's monotonic clock since the start of its last successful
  renewal (`bot.domain.lease.LeaseTiming`), checked before every side effect: Matrix
  requests that change anything, SMTP deliveries, the listener's 250.
- A lease taken over (a renewal finds another epoch) ends the process with
  `EXIT_LEASE_LOST`, so that systemd restarts it as the standby. A watchdog thread ends
  it the same way if its event loop has not ticked for a whole lease lifetime (a
  blocked loop, or a SIGSTOP: on SIGCONT it exits before doing anything else).

A database outage shorter than the takeover pauses the side effects (not held) and
the holder goes on once a renewal succeeds with its epoch unchanged: no other process
held the lease meanwhile, since that needs a new epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from bot.domain.lease import LeaseLost, LeaseTiming
from bot.services.waits import within
from bot.store import lease as lease_sql
from bot.store.db import create_engine

log = logging.getLogger(__name__)

# The exit code of a process that lost its lease (EX_TEMPFAIL): systemd restarts it.
EXIT_LEASE_LOST = 75
_LOCK_NOT_AVAILABLE = "55P03"


def holder_name(start: float | None = None) -> str:
    """This process, uniquely: host, pid and start time (fits PostgreSQL's 63-byte
    `application_name`)."""
    started = int((start if start is not None else time.time()) * 1000)
    return f"aplus/{socket.gethostname()[:24]}/{os.getpid()}/{started}"


def _lock_timeout(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return isinstance(exc, DBAPIError) and code == _LOCK_NOT_AVAILABLE


class Lease:
    def __init__(
        self,
        *,
        url: str,
        timing: LeaseTiming,
        holder: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder or holder_name()
        self.timing = timing
        # Its own small pool: a renewal never waits behind the store's transactions.
        self._engine = create_engine(url, application_name=self.holder)
        self._monotonic = monotonic
        self._epoch: int | None = None
        self._renewed_at: float | None = None
        self._beat = monotonic()
        self._keeper: asyncio.Task[None] | None = None
        self._watchdog: threading.Thread | None = None
        self._closing = threading.Event()

    # -- what the rest of the bot reads
    @property
    def epoch(self) -> int | None:
        """The epoch this process holds the lease with; None while standby (the fence)."""
        return self._epoch

    def fence(self) -> int | None:
        """For `Store`: the epoch every transaction must still find, None: READ ONLY."""
        return self._epoch

    def held(self) -> bool:
        """May this process have a side effect now? (Checked before each one.)"""
        return self._epoch is not None and self.timing.held(self._renewed_at, self._monotonic())

    # -- standby → active
    async def acquire(self) -> int:
        """Wait, as the standby, until this process holds the lease; its epoch."""
        waiting_for: str | None = None
        while True:
            started = self._monotonic()
            try:
                got = await within(self._try_acquire(), self.timing.ttl_seconds)
            except Exception as exc:
                if _lock_timeout(exc):
                    # The lease expired but its holder's open transaction (frozen, or
                    # cut off) still holds the row: end that holder's connections.
                    await self._terminate(await self._current())
                    continue
                log.warning("lease: not acquired (%s); next try soon", type(exc).__name__)
                got = None
            if got is not None:
                self._epoch, self._renewed_at = got.epoch, started
                log.info("lease acquired: epoch %d, holder %s", got.epoch, self.holder)
                # Whatever the previous holder still has open can only fail now (fenced);
                # ending it frees its connections and its locks at once.
                await self._terminate(got.previous)
                return got.epoch
            current = await self._current()
            if current is not None and current != waiting_for:
                waiting_for = current
                log.info("standby: the active bot is %s", current)
            await asyncio.sleep(self.timing.renew_seconds)

    async def _try_acquire(self) -> lease_sql.Acquired | None:
        async with self._engine.begin() as conn:
            return await lease_sql.acquire(conn, self.holder, self.timing.ttl_seconds)

    async def _current(self) -> str | None:
        with contextlib.suppress(Exception):
            async with self._engine.connect() as conn:
                state = await lease_sql.read(conn)
                return None if state is None else state.holder
        return None

    async def _terminate(self, holder: str | None) -> None:
        if holder is None or holder == self.holder:
            return
        try:
            async with self._engine.begin() as conn:
                ended = await lease_sql.terminate(conn, holder)
        except Exception as exc:
            log.warning("lease: stale connections not ended (%s)", type(exc).__name__)
            return
        if ended:
            log.warning("lease: %d connection(s) of the previous holder ended", ended)

    # -- active: renewals, the watchdog
    def start_keeping(self) -> None:
        """Renew in the background from now on, and watch the loop from a thread."""
        assert self._epoch is not None, "acquire() first"
        self._keeper = asyncio.create_task(self._keep(), name="lease")
        self._beat = self._monotonic()
        self._watchdog = threading.Thread(target=self._watch, name="lease-watchdog", daemon=True)
        self._watchdog.start()
        # A process resumed after a stop (SIGSTOP, a paused VM's SIGCONT) runs this in its
        # main thread before any other Python code there: no side effect can slip in.
        with contextlib.suppress(ValueError):  # not the main thread (some tests)
            signal.signal(signal.SIGCONT, self._on_continue)

    def _on_continue(self, _signum: int, _frame: object) -> None:
        if not self.held():
            os.write(2, b"lease: resumed after the lease's lifetime; exiting\n")
            os._exit(EXIT_LEASE_LOST)

    async def lost(self) -> None:
        """Returns never while held; raises `LeaseLost` once another process took over."""
        assert self._keeper is not None, "start_keeping() first"
        await asyncio.shield(self._keeper)

    @classmethod
    def for_settings(cls, url: str, renew_seconds: float, ttl_seconds: float) -> Lease:
        return cls(url=url, timing=LeaseTiming(renew_seconds, ttl_seconds))

    async def _keep(self) -> None:
        renew = self.timing.renew_seconds
        was_held = True
        while True:
            self._beat = self._monotonic()
            assert self._renewed_at is not None and self._epoch is not None
            await asyncio.sleep(max(0.0, self._renewed_at + renew - self._monotonic()))
            self._beat = self._monotonic()
            started = self._monotonic()
            try:
                still_ours = await within(self._renew(self._epoch), renew)
            except Exception as exc:
                log.warning("lease: renewal failed (%s)", type(exc).__name__)
            else:
                if not still_ours:
                    self._epoch = None
                    log.error("lease lost: another bot is active; stopping")
                    raise LeaseLost("taken over by another process")
                self._renewed_at = started
            held = self.held()
            if held != was_held:
                log.warning(
                    "lease: %s",
                    "renewed, side effects resume"
                    if held
                    else "not renewed in time, side effects paused",
                )
                was_held = held
            if not held:
                await asyncio.sleep(renew / 4)  # retry the renewal soon

    async def _renew(self, epoch: int) -> bool:
        async with self._engine.begin() as conn:
            return await lease_sql.renew(conn, self.holder, epoch, self.timing.ttl_seconds)

    def _watch(self) -> None:
        limit = self.timing.ttl_seconds
        while not self._closing.wait(self.timing.renew_seconds / 4):
            frozen = self._monotonic() - self._beat
            if frozen > limit:
                # No logging call: its lock may be held by the frozen loop's thread.
                os.write(2, f"lease: event loop frozen {frozen:.0f} s; exiting\n".encode())
                os._exit(EXIT_LEASE_LOST)

    def stop_renewing(self) -> None:
        """Tests: behave as a frozen holder (no renewal, no watchdog, nothing released)."""
        self._closing.set()
        if self._keeper is not None:
            self._keeper.cancel()

    async def close(self) -> None:
        """A clean stop: the lease is released at once, so the standby takes over now."""
        self._closing.set()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(BaseException):
                await self._keeper
        epoch, self._epoch = self._epoch, None
        if epoch is not None:
            try:
                async with self._engine.begin() as conn:
                    await lease_sql.release(conn, self.holder, epoch)
                log.info("lease released (epoch %d)", epoch)
            except Exception as exc:
                log.warning("lease: not released (%s); it expires", type(exc).__name__)
        await self._engine.dispose()
