"""Durable, exactly-once sending of the bot's Matrix messages.

A message is written to the outbox in the same database transaction as the
change that caused it, then sent after the commit with a transaction ID that
never changes. A crash before the send leaves it in the outbox; a crash after
the homeserver accepted it but before we recorded that gives, on retry, the
same event back (the homeserver remembers transaction IDs per device).

The outbox only reads the ledger: it never calls back into the room services. Before a
demande-room message goes out, it checks that nobody outside the ledger is in the room;
a room that is not clean is skipped (its messages stay queued), recorded for the guard
and the guard's worker is woken. The guard tells the outbox when the room is clean
again (`flush_soon`). Rooms are flushed independently: one slow or refusing room never
holds back the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, Protocol

from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.ports import DemandeTx, Ledger
from bot.services.clock import Clock
from bot.services.failures import (
    database_unavailable,
    describe,
    homeserver_outage,
    stop_if_requested,
)
from bot.services.worker import Wakeup, Worker
from bot.store.db import Store

log = logging.getLogger(__name__)

# A message that fails this many times for a reason of its own is set aside.
MAX_SEND_ATTEMPTS = 5
# A room whose flush fails (outage) is tried again after at most this long.
MAX_BACKOFF_SECONDS = 60.0


class OutboxTx(Protocol):
    async def enqueue_message(
        self, *, txn_id: str, room_id: str, content: dict[str, Any], now: datetime
    ) -> bool: ...


async def enqueue(
    tx: OutboxTx,
    *,
    txn_id: str,
    room_id: str,
    content: Mapping[str, Any],
    now: datetime,
    recipients: Collection[str] | None = None,
    encrypted: bool = True,
    event_type: str = "m.room.message",
) -> bool:
    """Queue a message. ``recipients`` None means: the ledger of the demande room."""
    envelope = {
        "type": event_type,
        "content": dict(content),
        "encrypted": encrypted,
        "recipients": sorted(recipients) if recipients is not None else None,
    }
    return await tx.enqueue_message(txn_id=txn_id, room_id=room_id, content=envelope, now=now)


class RoomNotClean(Exception):
    """Someone outside the ledger is in the room: nothing is sent until the guard is done."""


class Outbox:
    def __init__(
        self,
        store: Store,
        gateway: Gateway,
        clock: Clock,
        ledger: Ledger,
        *,
        wake_guard: Callable[[], None],
        concurrency: int = 4,
        wakeup: Wakeup | None = None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.clock = clock
        self.ledger = ledger
        self._wake_guard = wake_guard
        self._locks: dict[str, asyncio.Lock] = {}
        self._soon: set[str] = set()
        self._all = False
        self._limit = asyncio.Semaphore(concurrency)
        # One task per room being flushed: a room woken while its flush runs is flushed
        # again right after (`_again`); a room whose flush fails retries on its own.
        self._flushing: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        # `wakeup`: shared with parts built before the outbox that queue messages in their
        # own transactions (the identity pins, the unverified-session notices).
        self.worker = Worker("outbox", self._step, idle_seconds=30.0, wakeup=wakeup)

    # ------------------------------------------------------------------ waking
    def flush_soon(self, room_id: str | None = None) -> None:
        """Send what is queued for this room (every room if None) as soon as possible."""
        if room_id is None:
            self._all = True
        else:
            self._soon.add(room_id)
        self.worker.wake()

    def wake(self) -> None:
        self.flush_soon()

    async def enqueue(
        self,
        tx: DemandeTx,
        *,
        txn_id: str,
        room_id: str,
        content: Mapping[str, Any],
        recipients: Collection[str] | None = None,
        encrypted: bool = True,
        hold: bool = False,
        event_type: str = "m.room.message",
    ) -> bool:
        """Queue a message in `tx`; it is sent once `tx` commits (``hold``: once asked)."""
        queued = await enqueue(
            tx,
            txn_id=txn_id,
            room_id=room_id,
            content=content,
            now=self.clock.now(),
            recipients=recipients,
            encrypted=encrypted,
            event_type=event_type,
        )
        if not hold:
            tx.after_commit(lambda: self.flush_soon(room_id))
        return queued

    async def run(self) -> None:
        try:
            await self.worker.run()
        finally:
            flushing = list(self._flushing.values())
            for task in flushing:
                task.cancel()
            await asyncio.gather(*flushing, return_exceptions=True)

    async def _step(self) -> None:
        """Start a flush of every room woken (or with pending messages); never wait for
        one: a room whose send is slow or failing never delays a room woken after it."""
        rooms, self._soon = self._soon, set()
        everything, self._all = self._all, False
        if everything or not rooms:
            async with self.store.transaction() as tx:
                rooms |= set(await tx.rooms_with_pending_messages())
        for room in sorted(rooms):
            if room in self._flushing:
                self._again.add(room)
            else:
                self._flushing[room] = asyncio.create_task(
                    self._room_until_sent(room), name=f"outbox {room}"
                )

    async def _room_until_sent(self, room_id: str) -> None:
        """Flush one room until what is queued went out; after a failure (the homeserver
        or the database unavailable), again with a doubling delay, this room alone."""
        delay = 1.0
        try:
            while True:
                self._again.discard(room_id)
                failure = await self._flush_quietly(room_id)
                if failure is None:
                    if room_id not in self._again:
                        return
                    continue
                log.warning("outbox: room %s: %s; retry in %.0f s", room_id, describe(failure),
                            delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
        finally:
            self._flushing.pop(room_id, None)

    async def _flush_quietly(self, room_id: str) -> BaseException | None:
        """Flush one room; a failure of that room is returned, never raised to the others."""
        try:
            async with self._limit:
                await self.flush_room(room_id)
        except RoomNotClean:
            return None  # the guard wakes us once the room is clean
        except Exception as exc:
            # A failed cleanup after the stop (`Outbox.run` waits for this room: a
            # retry here held the whole process up).
            stop_if_requested(exc)
            if not (homeserver_outage(exc) or database_unavailable(exc)):
                log.exception("outbox: room %s could not be flushed", room_id)
            return exc
        return None

    # ------------------------------------------------------------------ flushing
    async def flush(self, room_id: str | None = None) -> int:
        """Send what is pending now (tests, the admin room). Raises an outage error."""
        if room_id is not None:
            try:
                return await self.flush_room(room_id)
            except RoomNotClean:
                return 0
        async with self.store.transaction() as tx:
            rooms = await tx.rooms_with_pending_messages()
        sent = 0
        for room in rooms:
            try:
                sent += await self.flush_room(room)
            except RoomNotClean:
                continue
        return sent

    async def flush_room(self, room_id: str) -> int:
        """Send the room's pending messages, oldest first; returns how many were sent.

        Raises the first outage error (homeserver down): what is left stays queued.
        A permanent refusal, or a message that keeps failing for a reason of its own, is
        logged and set aside so that it cannot block the room's queue.
        """
        sent = 0
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            async with self.store.transaction() as tx:
                pending = await tx.pending_messages(room_id)
            ledger: set[str] | None = None
            for msg in pending:
                env = msg.content
                if env.get("encrypted", True) and env.get("recipients") is None and ledger is None:
                    ledger = await self._clean_ledger(room_id)
                event_id: str | None
                try:
                    event_id = await self._send_one(room_id, msg.txn_id, env, ledger)
                except Exception as exc:
                    if homeserver_outage(exc) or database_unavailable(exc):
                        raise
                    event_id = await self._failed(msg.txn_id, room_id, exc)
                if event_id is None:
                    continue  # tried again on the next flush
                async with self.store.transaction() as tx:
                    await tx.mark_message_sent(msg.txn_id, event_id, now=self.clock.now())
                sent += 1
        return sent

    async def _clean_ledger(self, room_id: str) -> set[str]:
        """The room's authorised members; raises `RoomNotClean` if anyone else is there."""
        allowed = await self.ledger.authorised(room_id)
        if allowed is None:
            raise MatrixError(None, "APLUS_UNKNOWN_ROOM", f"no ledger for room {room_id}")
        present = self.gateway.present_members(room_id)
        if present is None:
            present = set((await self.gateway.refresh_members(room_id)).users)
        if present - allowed:
            async with self.store.transaction() as tx:
                await tx.request_guard(room_id, "present_at_send", self.clock.now())
            log.warning("room %s: not sent, someone outside the ledger is present", room_id)
            self._wake_guard()
            raise RoomNotClean(room_id)
        return allowed

    async def _send_one(
        self, room_id: str, txn_id: str, env: Mapping[str, Any], ledger: set[str] | None
    ) -> str:
        content = env["content"]
        event_type = env.get("type", "m.room.message")
        if not env.get("encrypted", True):
            return await self.gateway.send_plain(room_id, content, txn_id, event_type=event_type)
        recipients = env.get("recipients")
        if recipients is None:
            assert ledger is not None
            recipients = ledger
        return await self.gateway.send_encrypted(
            room_id, content, txn_id, recipients=recipients, event_type=event_type
        )

    async def _failed(self, txn_id: str, room_id: str, exc: Exception) -> str | None:
        """A message's own failure: refused for good (an event ID placeholder), or later."""
        if isinstance(exc, MatrixError) and exc.status is not None and 400 <= exc.status < 500:
            log.error("message %s to %s refused by the homeserver: %s", txn_id, room_id, exc)
            return f"!refused:{exc.status}:{exc.errcode}"
        async with self.store.transaction() as tx:
            attempts = await tx.record_send_attempt(txn_id)
        if attempts >= MAX_SEND_ATTEMPTS:
            log.error("message %s to %s set aside after %d failures", txn_id, room_id, attempts)
            return f"!failed:{describe(exc)}"
        log.exception("message %s to %s failed (attempt %d)", txn_id, room_id, attempts)
        return None
