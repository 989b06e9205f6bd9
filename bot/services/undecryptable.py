"""Messages the bot cannot decrypt: kept, retried when keys arrive, never dropped silently.

An undecryptable event is recorded in the database (with its ciphertext) the
first time it is seen. After every sync batch, each pending event is tried
again against the keys nio holds by then (new `m.room_key` or accepted forwarded
keys); once it decrypts, it goes to the normal handler, which is idempotent on
the event ID, so an event decrypted late is acted on once. Meanwhile the key is
requested from the sender's devices, and once the configured wait is over one
notice asks the room to send the message again (one per event, by transaction ID).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from nio import MegolmEvent

from bot.domain import undecryptable as rules
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.matrix.gateway import MatrixGateway
from bot.services import outbox as outbox_mod
from bot.services.clock import Clock
from bot.store.crypto_tx import UndecryptableEvent
from bot.store.db import Store
from bot.sync_loop import is_infrastructure_error

log = logging.getLogger(__name__)

Handler = Callable[[str, Any], Awaitable[None]]
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
        gateway: MatrixGateway,
        clock: Clock,
        outbox: outbox_mod.Outbox,
        notice_after_seconds: float,
        handler: Handler,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.clock = clock
        self.outbox = outbox
        self.notice_after = timedelta(seconds=notice_after_seconds)
        self.handler = handler
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
    async def after_sync(self) -> None:
        """After each sync batch: new keys may have arrived.

        Homeserver or database down: raised, so the batch is retried. Anything else
        is logged: a bug here must not stop the sync loop.
        """
        try:
            await self.retry()
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            log.exception("retrying undecryptable events failed")

    async def retry(self, *, decrypt: bool = True) -> int:
        """Try every pending event again; request keys; post due notices. Returns decrypted.

        Keys only arrive with a sync, so only the sync loop asks to ``decrypt``: events
        are then handled in the sync loop's task, like every other event.
        """
        decrypted = 0
        async with self._lock:
            async with self.store.transaction() as tx:
                pending = await tx.undecryptable_events()
            for item in pending:
                if decrypt and await self._try(item):
                    decrypted += 1
                else:
                    await self._follow_up(item)
        return decrypted

    async def _try(self, item: UndecryptableEvent) -> bool:
        event = MegolmEvent.from_dict(item.event)
        if not isinstance(event, MegolmEvent):
            log.error("stored undecryptable event %s cannot be parsed", item.event_id)
            return False
        clear = self.gateway.try_decrypt(event, item.room_id)
        if clear is None:
            return False
        now = self.clock.now()
        log.info("event %s in %s decrypted late; handled now", item.event_id, item.room_id)
        # Handled first, then marked: a crash in between hands it over again, and the
        # handler's own idempotency (processed event IDs) makes that harmless.
        await self.handler(item.room_id, clear)
        async with self.store.transaction() as tx:
            await tx.mark_undecryptable(item.event_id, decrypted_at=now)
            await tx.audit(
                "undecryptable_decrypted",
                actor=item.sender,
                reference=await self._reference(tx, item.room_id),
                details={"event_id": item.event_id, "late_seconds": _seconds(now, item)},
                now=now,
            )
        return True

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
            await outbox_mod.enqueue(
                tx,
                txn_id=rules.notice_txn(item.event_id),
                room_id=item.room_id,
                content=mx.notice(rules.NOTICE_TEXT),
                now=now,
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
        try:
            await self.outbox.flush(item.room_id)
        except MatrixError as exc:
            log.warning("notice for %s queued, homeserver unavailable: %s", item.event_id, exc)
            self.outbox.wake()

    @staticmethod
    async def _reference(tx: Any, room_id: str) -> str | None:
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
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=wait)
                self._wake.clear()
                await self.retry(decrypt=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("undecryptable events: check failed; retry in %.0f s", IDLE_SECONDS)
                await asyncio.sleep(IDLE_SECONDS)


def _seconds(now: Any, item: UndecryptableEvent) -> int:
    return int((now - item.received_at).total_seconds())
