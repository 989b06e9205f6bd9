"""The encryption side's part of `Tx` (a mixin: `Tx` inherits it, nothing else does)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from bot.store.crypto_models import (
    DeviceNoticeRow,
    IdentityPinRow,
    RoomKeyDeliveryRow,
    RoomKeyRow,
    UndecryptableEventRow,
)
from bot.store.models import DemandeRow, ParticipantRow
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


@dataclass(frozen=True, slots=True)
class ArchivedRoomKey:
    """One of the bot's session keys as first meant for a participant (see `RoomKeyRow`)."""

    room_id: str
    session_id: str
    first_index: int
    session_key: str


@dataclass(frozen=True, slots=True)
class IdentityPin:
    user_id: str
    master_key: str
    pinned_at: datetime
    pending_master_key: str | None
    pending_since: datetime | None


def _room_key_aad(session_id: str, user_id: str) -> bytes:
    return f"room_keys:session_key:{session_id}:{user_id}".encode()


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

    # ------------------------------------------------------------ room keys

    async def archive_room_key(
        self,
        *,
        room_id: str,
        session_id: str,
        first_index: int,
        session_key: str,
        users: Collection[str],
        now: datetime,
    ) -> None:
        """Keep the session key as it is now for each user (the first one recorded wins)."""
        for user_id in sorted(set(users)):
            await self._s.execute(
                self._insert(RoomKeyRow)
                .values(
                    session_id=session_id,
                    user_id=user_id,
                    room_id=room_id,
                    first_index=first_index,
                    session_key_enc=self._cipher.encrypt(
                        session_key.encode("ascii"), _room_key_aad(session_id, user_id)
                    ),
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["session_id", "user_id"])
            )

    async def record_key_deliveries(
        self, session_id: str, devices: Collection[tuple[str, str]], *, now: datetime
    ) -> None:
        for user_id, device_id in sorted(set(devices)):
            await self._s.execute(
                self._insert(RoomKeyDeliveryRow)
                .values(
                    session_id=session_id,
                    user_id=user_id,
                    device_id=device_id,
                    delivered_at=now,
                )
                .on_conflict_do_nothing(index_elements=["session_id", "user_id", "device_id"])
            )

    async def room_keys_for(self, user_id: str) -> list[ArchivedRoomKey]:
        """The user's archived keys, only in demandes whose ledger authorises them today."""
        authorised_rooms = (
            select(DemandeRow.room_id)
            .join(ParticipantRow, ParticipantRow.demande_id == DemandeRow.id)
            .where(ParticipantRow.matrix_id == user_id, ParticipantRow.removed_at.is_(None))
        )
        stmt = (
            select(RoomKeyRow)
            .where(RoomKeyRow.user_id == user_id, RoomKeyRow.room_id.in_(authorised_rooms))
            .order_by(RoomKeyRow.room_id, RoomKeyRow.created_at, RoomKeyRow.session_id)
        )
        return [
            ArchivedRoomKey(
                room_id=r.room_id,
                session_id=r.session_id,
                first_index=r.first_index,
                session_key=self._cipher.decrypt(
                    r.session_key_enc, _room_key_aad(r.session_id, r.user_id)
                ).decode("ascii"),
            )
            for r in await self._s.scalars(stmt)
        ]

    async def key_deliveries(self, user_id: str) -> set[tuple[str, str]]:
        """(session ID, device ID) of every session of the bot a device of the user holds."""
        stmt = select(RoomKeyDeliveryRow.session_id, RoomKeyDeliveryRow.device_id).where(
            RoomKeyDeliveryRow.user_id == user_id
        )
        return {(s, d) for s, d in (await self._s.execute(stmt)).all()}

    async def forget_room_keys(self, room_id: str) -> int:
        """Drop a room's archived keys and their deliveries (the room is purged)."""
        sessions = select(RoomKeyRow.session_id).where(RoomKeyRow.room_id == room_id)
        await self._s.execute(
            delete(RoomKeyDeliveryRow).where(RoomKeyDeliveryRow.session_id.in_(sessions))
        )
        result = await self._s.execute(delete(RoomKeyRow).where(RoomKeyRow.room_id == room_id))
        return int(getattr(result, "rowcount", 0) or 0)

    # ------------------------------------------------------------ identity pins

    async def identity_pin(self, user_id: str) -> IdentityPin | None:
        row = await self._s.get(IdentityPinRow, user_id)
        if row is None:
            return None
        return IdentityPin(
            row.user_id, row.master_key, row.pinned_at, row.pending_master_key, row.pending_since
        )

    async def pin_identity(self, user_id: str, master_key: str, *, now: datetime) -> bool:
        """Pin on first sight; False (and nothing changed) if the user is pinned already."""
        stmt = (
            self._insert(IdentityPinRow)
            .values(user_id=user_id, master_key=master_key, pinned_at=now)
            .on_conflict_do_nothing(index_elements=["user_id"])
            .returning(IdentityPinRow.user_id)
        )
        return (await self._s.execute(stmt)).first() is not None

    async def set_pending_identity(
        self, user_id: str, master_key: str | None, *, now: datetime
    ) -> None:
        """Record (or, with None, drop) a master key seen instead of the pinned one."""
        await self._s.execute(
            update(IdentityPinRow)
            .where(IdentityPinRow.user_id == user_id)
            .values(pending_master_key=master_key, pending_since=now if master_key else None)
        )

    async def accept_identity(self, user_id: str, *, now: datetime) -> IdentityPin | None:
        """The pending master key becomes the pinned one; the pin as it was, or None."""
        pin = await self.identity_pin(user_id)
        if pin is None or pin.pending_master_key is None:
            return None
        await self._s.execute(
            update(IdentityPinRow)
            .where(IdentityPinRow.user_id == user_id)
            .values(
                master_key=pin.pending_master_key,
                pinned_at=now,
                pending_master_key=None,
                pending_since=None,
            )
        )
        return pin

    # ------------------------------------------------------------ device notices

    async def mark_device_told(
        self, user_id: str, device_id: str, *, room_id: str, now: datetime
    ) -> bool:
        """True the first time a session is told it is not verified; False afterwards."""
        stmt = (
            self._insert(DeviceNoticeRow)
            .values(user_id=user_id, device_id=device_id, room_id=room_id, told_at=now)
            .on_conflict_do_nothing(index_elements=["user_id", "device_id"])
            .returning(DeviceNoticeRow.user_id)
        )
        return (await self._s.execute(stmt)).first() is not None
