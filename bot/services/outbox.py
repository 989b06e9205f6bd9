"""Durable, exactly-once sending of the bot's Matrix messages.

A message is written to the outbox in the same database transaction as the
change that caused it, then sent after the commit with a transaction ID that
never changes. A crash before the send leaves it in the outbox; a crash after
the homeserver accepted it but before we recorded that gives, on retry, the
same event back (the homeserver remembers transaction IDs per device).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from typing import Any, Protocol

from bot.matrix.errors import MatrixError
from bot.matrix.gateway import MatrixGateway
from bot.services.clock import Clock
from bot.store.db import Store

log = logging.getLogger(__name__)


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


# Resolves the authorised recipients of a room and makes sure no intruder is in it.
RecipientsFor = Callable[[str], Awaitable[Collection[str] | None]]


class Outbox:
    def __init__(
        self,
        store: Store,
        gateway: MatrixGateway,
        clock: Clock,
        recipients_for: RecipientsFor,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.clock = clock
        self.recipients_for = recipients_for
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()

    def wake(self) -> None:
        self._wake.set()

    async def flush(self, room_id: str | None = None) -> int:
        """Send what is pending (oldest first). Returns how many were sent.

        Raises the first transient error (homeserver down): what is left stays queued.
        A permanent refusal (e.g. the bot is no longer in the room) is logged and the
        message is set aside so it cannot block the queue.
        """
        sent = 0
        async with self._flush_lock:
            async with self.store.transaction() as tx:
                pending = await tx.pending_messages(room_id)
            for msg in pending:
                env = msg.content
                try:
                    event_id = await self._send_one(msg.room_id, msg.txn_id, env)
                except MatrixError as exc:
                    if exc.transient:
                        raise
                    log.error(
                        "message %s to %s refused by the homeserver: %s %s",
                        msg.txn_id,
                        msg.room_id,
                        exc.status,
                        exc.errcode,
                    )
                    event_id = f"!refused:{exc.status}:{exc.errcode}"
                async with self.store.transaction() as tx:
                    await tx.mark_message_sent(msg.txn_id, event_id, now=self.clock.now())
                sent += 1
        return sent

    async def _send_one(self, room_id: str, txn_id: str, env: Mapping[str, Any]) -> str:
        content = env["content"]
        event_type = env.get("type", "m.room.message")
        if not env.get("encrypted", True):
            return await self.gateway.send_plain(room_id, content, txn_id, event_type=event_type)
        recipients = env.get("recipients")
        if recipients is None:
            resolved = await self.recipients_for(room_id)
            if resolved is None:
                raise MatrixError(None, "APLUS_UNKNOWN_ROOM", f"no ledger for room {room_id}")
            recipients = resolved
        return await self.gateway.send_encrypted(
            room_id, content, txn_id, recipients=recipients, event_type=event_type
        )

    async def run(self, *, idle_seconds: float = 30.0) -> None:
        """Background worker: retries what is left, with backoff while the homeserver is down."""
        delay = 1.0
        while True:
            try:
                await self.flush()
                delay = 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=idle_seconds)
                self._wake.clear()
            except MatrixError as exc:
                log.warning("outbox: homeserver unavailable (%s); retry in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
            except Exception:
                # Database gone or a bug: keep the worker alive, the messages stay queued.
                log.exception("outbox: unexpected failure; retry in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
