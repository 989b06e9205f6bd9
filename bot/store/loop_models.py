"""Tables of the daily loop (revision 0013_daily_loop): the instructeurs' companion room
of a demande, and the « procédure standard » flag. Registered on `Base` by
`bot.store.tables`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from bot.store.base import Base


class CompanionRoomRow(Base):
    """A demande's room for its instructeurs only, asked for once (`!entreinstructeurs`);
    `room_id` is None until the bot has created it."""

    __tablename__ = "companion_rooms"

    demande_id: Mapped[int] = mapped_column(ForeignKey("demandes.id"), primary_key=True)
    room_id: Mapped[str | None] = mapped_column(unique=True)
    requested_by: Mapped[str]
    requested_at: Mapped[datetime]


class ProcedureStandardRow(Base):
    """An instructeur said the demande could have gone through the usual channel."""

    __tablename__ = "procedure_standard"

    demande_id: Mapped[int] = mapped_column(ForeignKey("demandes.id"), primary_key=True)
    flagged_by: Mapped[str]
    flagged_at: Mapped[datetime]
