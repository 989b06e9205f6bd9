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
