"""The lease of the active bot (revision 0014): one row, PostgreSQL only in use.

Registered on `Base` by `bot.store.tables`; read and written by `bot.store.lease`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bot.store.base import Base


class LeaseRow(Base):
    """Who is the active bot: `holder` (host, pid, start time), a strictly increasing
    `epoch` (one per acquisition) and `expires_at`, computed by the database's clock.

    `epoch` is unique: PostgreSQL then counts it as a key column, so a write
    transaction's `FOR KEY SHARE` on the row (the fence) lets renewals through (they
    change `expires_at` only) and holds a takeover (it changes `epoch`) until it ends.
    """

    __tablename__ = "lease"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    holder: Mapped[str]
    epoch: Mapped[int] = mapped_column(BigInteger, unique=True)
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]
