"""Tables of the demande being prepared in the aidant's direct chat (revision 0012).

`draft_inputs` keeps what the aidant has written so far, field by field, before the
form is complete (a correction can then be one line); `draft_files` keeps the files
sent in the direct chat while it is open, until `!confirmer` posts them in the
demande's room. Everything that can identify the usager is sealed (`_enc`).
Registered on `Base` by `bot.store.tables`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bot.store.base import Base


class DraftInputRow(Base):
    """One aidant's demande in preparation in one direct chat (at most one)."""

    __tablename__ = "draft_inputs"
    __table_args__ = (UniqueConstraint("aidant_agent_id", "dm_room_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    aidant_agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    dm_room_id: Mapped[str]
    fields_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # The field the guided path asked for last (a field name, never a value).
    asking: Mapped[str | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DraftFileRow(Base):
    """A file sent with a draft; once the demande exists, `demande_id` says where it
    goes, and the row is deleted when it has been posted in the room."""

    __tablename__ = "draft_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_id: Mapped[int | None] = mapped_column(ForeignKey("draft_inputs.id"), index=True)
    demande_id: Mapped[int | None] = mapped_column(ForeignKey("demandes.id"), index=True)
    meta_enc: Mapped[bytes] = mapped_column(LargeBinary)  # file name, type, size
    data_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
