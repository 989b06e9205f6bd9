"""Messages the bot cannot decrypt: kept, retried when keys arrive, never dropped silently.

An undecryptable event is recorded in the database (with its ciphertext) the
first time it is seen. After every sync batch, each pending event is tried
again against the keys nio holds by then (new `m.room_key` or accepted forwarded
keys); the ones that decrypt are returned to the sync loop, which hands them to
the normal handler (idempotent on the event ID, so an event decrypted late is
acted on once) and then calls `handled`. Meanwhile the key is
requested from the sender's devices, and once the configured wait is over one
notice asks the room to send the message again (one per event, by transaction ID).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from nio import MegolmEvent

from bot.domain import undecryptable as rules
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.ports import Sender
from bot.services.clock import Clock
from bot.services.failures import database_unavailable, homeserver_outage, stop_if_requested
from bot.services.waits import woken_within
from bot.store.crypto_tx import UndecryptableEvent
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0


def _pending(item: UndecryptableEvent) -> rules.Pending:
    return rules.Pending(
        received_at=item.received_at,
        key_requested=item.key_requested_at is not None,
        notified=item.notice_at is not None,
    )


class Undecryptables:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        clock: Clock,
        sender: Sender,
        notice_after_seconds: float,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.clock = clock
        self.sender = sender
        self.notice_after = timedelta(seconds=notice_after_seconds)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ intake
    async def record(self, room_id: str, event: MegolmEvent, *, reference: str | None) -> None:
        """Keep an event we could not decrypt (idempotent on its event ID)."""
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if await tx.is_processed(event.event_id):
                return  # handled already (decrypted at the time, or late)
            new = await tx.record_undecryptable(
                event_id=event.event_id,
                room_id=room_id,
                sender=event.sender,
                session_id=event.session_id or "",
                event=event.source,
                now=now,
            )
            if new:
                await tx.audit(
                    "undecryptable_event",
                    actor=event.sender,
                    reference=reference,
                    details={"event_id": event.event_id, "room_id": room_id},
                    now=now,
                )
        if new:
            log.warning(
                "event %s in %s could not be decrypted (session %s); kept for a retry",
                event.event_id,
                room_id,
                (event.session_id or "?")[:8],
            )
            self._wake.set()

    # ------------------------------------------------------------------- retry
    async def after_sync(self) -> list[tuple[str, Any]]:
        """After each sync batch, when new keys may have arrived: the events that decrypt
        now, as (room ID, decrypted event), for the sync loop to handle (then `handled`).

        The database down: raised, so the batch is retried. Anything else is logged (the
        events stay pending): neither an outage nor a bug here stops the sync loop.
        """
        try:
            return await self.retry()
        except Exception as exc:
            if database_unavailable(exc):
                raise
            if not homeserver_outage(exc):
                log.exception("retrying undecryptable events failed")
            return []

    async def retry(self, *, decrypt: bool = True) -> list[tuple[str, Any]]:
        """Try every pending event again; request keys; post due notices.

        Keys only arrive with a sync, so only the sync loop asks to ``decrypt``.
        """
        decrypted: list[tuple[str, Any]] = []
        async with self._lock:
            async with self.store.transaction() as tx:
                pending = await tx.undecryptable_events()
            for item in pending:
                clear = self._try(item) if decrypt else None
                if clear is not None:
                    decrypted.append((item.room_id, clear))
                    continue
                try:
                    await self._follow_up(item)
                except Exception as exc:
                    if database_unavailable(exc):
                        raise
                    log.warning("event %s: follow-up postponed (%s)", item.event_id, exc)
        return decrypted

    def _try(self, item: UndecryptableEvent) -> Any | None:
        event = MegolmEvent.from_dict(item.event)
        if not isinstance(event, MegolmEvent):
            log.error("stored undecryptable event %s cannot be parsed", item.event_id)
            return None
        clear = self.gateway.try_decrypt(event, item.room_id)
        if clear is not None:
            log.info("event %s in %s decrypted late", item.event_id, item.room_id)
        return clear

    async def handled(self, room_id: str, event_id: str) -> None:
        """The sync loop handled (or set aside for a retry) an event decrypted late."""
        now = self.clock.now()
        async with self.store.transaction() as tx:
            item = await tx.undecryptable_event(event_id)
            if item is None or item.decrypted_at is not None:
                return
            await tx.mark_undecryptable(event_id, decrypted_at=now)
            await tx.audit(
                "undecryptable_decrypted",
                actor=item.sender,
                reference=await self._reference(tx, room_id),
                details={"event_id": event_id, "late_seconds": _seconds(now, item)},
                now=now,
            )

    async def _follow_up(self, item: UndecryptableEvent) -> None:
        now = self.clock.now()
        todo = rules.steps(_pending(item), now, self.notice_after)
        if todo.request_key:
            event = MegolmEvent.from_dict(item.event)
            try:
                await self.gateway.request_room_key(event, item.room_id)
            except MatrixError as exc:
                if exc.transient:
                    raise
                log.warning("key request for %s refused: %s", item.event_id, exc.errcode)
            async with self.store.transaction() as tx:
                await tx.mark_undecryptable(item.event_id, key_requested_at=now)
        if todo.post_notice:
            await self._notice(item, now)

    async def _notice(self, item: UndecryptableEvent, now: Any) -> None:
        async with self.store.transaction() as tx:
            reference = await self._reference(tx, item.room_id)
            # A demande room: its ledger receives it. A direct chat: only its agent.
            recipients = None if reference is not None else [item.sender]
            await self.sender.enqueue(
                tx,
                txn_id=rules.notice_txn(item.event_id),
                room_id=item.room_id,
                content=mx.notice(rules.NOTICE_TEXT),
                recipients=recipients,
            )
            await tx.mark_undecryptable(item.event_id, notice_at=now)
            await tx.audit(
                "undecryptable_notice",
                actor=item.sender,
                reference=reference,
                details={"event_id": item.event_id, "room_id": item.room_id},
                now=now,
            )
        log.warning(
            "event %s in %s still undecryptable: notice posted", item.event_id, item.room_id
        )

    @staticmethod
    async def _reference(tx: Tx, room_id: str) -> str | None:
        demande = await tx.get_demande_by_room(room_id)
        return demande.reference if demande is not None else None

    # ------------------------------------------------------------ notice timer
    async def run(self) -> None:
        """Background: post notices when their wait is over, even if no sync comes."""
        while True:
            try:
                async with self.store.transaction() as tx:
                    pending = [_pending(i) for i in await tx.undecryptable_events()]
                due = rules.next_notice_due(pending, self.notice_after)
                wait = IDLE_SECONDS
                if due is not None:
                    wait = max(0.0, min(wait, (due - self.clock.now()).total_seconds()))
                if wait > 0:
                    await woken_within(self._wake.wait(), wait)
                self._wake.clear()
                await self.retry(decrypt=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                stop_if_requested(exc)  # a failed cleanup after the stop: the stop goes on
                log.exception("undecryptable events: check failed; retry in %.0f s", IDLE_SECONDS)
                await asyncio.sleep(IDLE_SECONDS)


def _seconds(now: Any, item: UndecryptableEvent) -> int:
    return int((now - item.received_at).total_seconds())
