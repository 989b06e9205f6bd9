"""Tables of the end-to-end encryption side (revision 0002).

Registered on `Base` by `bot.store.tables`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary
from sqlalchemy.orm import Mapped, mapped_column

from bot.store.base import Base


class UndecryptableEventRow(Base):
    """An event the bot could not decrypt yet: kept until its key arrives, never dropped.

    The event is stored as received (Megolm ciphertext), sealed again at rest.
    """

    __tablename__ = "undecryptable_events"

    event_id: Mapped[str] = mapped_column(primary_key=True)
    room_id: Mapped[str]
    sender: Mapped[str]
    session_id: Mapped[str]
    event_enc: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime]
    key_requested_at: Mapped[datetime | None]
    notice_at: Mapped[datetime | None]
    decrypted_at: Mapped[datetime | None] = mapped_column(index=True)


class RoomKeyRow(Base):
    """A Megolm session key of the bot, as it was first meant for one participant.

    The signed session key (`m.room_key` form) at the ratchet index where the
    participant was first among the session's recipients: index 0 for those present
    when the session started. A device of theirs that appears later gets exactly
    this, so it reads what they were meant to read, from then on and no earlier.
    Sealed at rest: whoever holds it decrypts the room's messages of that session.
    """

    __tablename__ = "room_keys"

    session_id: Mapped[str] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(primary_key=True, index=True)
    room_id: Mapped[str] = mapped_column(index=True)
    first_index: Mapped[int]
    session_key_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class RoomKeyDeliveryRow(Base):
    """A device that holds one of the bot's sessions (sent live or caught up later)."""

    __tablename__ = "room_key_deliveries"

    session_id: Mapped[str] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(primary_key=True)
    delivered_at: Mapped[datetime]


class IdentityPinRow(Base):
    """A participant's cross-signing master key, taken on first sight (trust on first use).

    A different master key later is held in `pending_master_key`, trusted by nobody,
    until an operator accepts it (`!identite-accepter`): their devices get no room key
    meanwhile. Public keys only: nothing secret here.
    """

    __tablename__ = "identity_pins"

    user_id: Mapped[str] = mapped_column(primary_key=True)
    master_key: Mapped[str]
    pinned_at: Mapped[datetime]
    pending_master_key: Mapped[str | None]
    pending_since: Mapped[datetime | None]


class DeviceNoticeRow(Base):
    """A participant's session told, once, that it gets no room key until verified."""

    __tablename__ = "device_notices"

    user_id: Mapped[str] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(primary_key=True)
    room_id: Mapped[str]
    told_at: Mapped[datetime]
