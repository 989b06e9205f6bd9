"""The encryption side's part of `Tx` (a mixin: `Tx` inherits it, nothing else does)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from bot.store.crypto_models import UndecryptableEventRow
from bot.store.tx_base import TxBase


@dataclass(frozen=True, slots=True)
class UndecryptableEvent:
    event_id: str
    room_id: str
    sender: str
    session_id: str
    event: dict[str, Any]  # the encrypted event, as received
    received_at: datetime
    key_requested_at: datetime | None
    notice_at: datetime | None
    decrypted_at: datetime | None


def _event_aad(event_id: str) -> bytes:
    return b"undecryptable_events:event:" + event_id.encode("utf-8")


class CryptoTx(TxBase):
    async def record_undecryptable(
        self,
        *,
        event_id: str,
        room_id: str,
        sender: str,
        session_id: str,
        event: Mapping[str, Any],
        now: datetime,
    ) -> bool:
        """True the first time this event is recorded; False afterwards (never raises)."""
        stmt = (
            self._insert(UndecryptableEventRow)
            .values(
                event_id=event_id,
                room_id=room_id,
                sender=sender,
                session_id=session_id,
                event_enc=self._cipher.encrypt_json(dict(event), _event_aad(event_id)),
                received_at=now,
            )
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(UndecryptableEventRow.event_id)
        )
        return (await self._s.execute(stmt)).first() is not None

    async def undecryptable_events(self, *, pending_only: bool = True) -> list[UndecryptableEvent]:
        stmt = select(UndecryptableEventRow).order_by(
            UndecryptableEventRow.received_at, UndecryptableEventRow.event_id
        )
        if pending_only:
            stmt = stmt.where(UndecryptableEventRow.decrypted_at.is_(None))
        return [
            UndecryptableEvent(
                event_id=r.event_id,
                room_id=r.room_id,
                sender=r.sender,
                session_id=r.session_id,
                event=self._cipher.decrypt_json(r.event_enc, _event_aad(r.event_id)),
                received_at=r.received_at,
                key_requested_at=r.key_requested_at,
                notice_at=r.notice_at,
                decrypted_at=r.decrypted_at,
            )
            for r in await self._s.scalars(stmt)
        ]

    async def undecryptable_event(self, event_id: str) -> UndecryptableEvent | None:
        row = await self._s.get(UndecryptableEventRow, event_id)
        if row is None:
            return None
        return UndecryptableEvent(
            event_id=row.event_id,
            room_id=row.room_id,
            sender=row.sender,
            session_id=row.session_id,
            event=self._cipher.decrypt_json(row.event_enc, _event_aad(row.event_id)),
            received_at=row.received_at,
            key_requested_at=row.key_requested_at,
            notice_at=row.notice_at,
            decrypted_at=row.decrypted_at,
        )

    async def mark_undecryptable(
        self,
        event_id: str,
        *,
        key_requested_at: datetime | None = None,
        notice_at: datetime | None = None,
        decrypted_at: datetime | None = None,
    ) -> None:
        """Set the given timestamps, each only once (the first one recorded wins)."""
        row = UndecryptableEventRow
        for column, value in (
            (row.key_requested_at, key_requested_at),
            (row.notice_at, notice_at),
            (row.decrypted_at, decrypted_at),
        ):
            if value is None:
                continue
            await self._s.execute(
                update(row)
                .where(row.event_id == event_id, column.is_(None))
                .values({column.key: value})
            )
