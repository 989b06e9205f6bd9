"""Tables of the bot's own durable work queues (revision 0005).

Each was a JSON list in one `bot_state` row, read and rewritten on every change (two
coroutines could lose an update); a row per item makes each change one statement.
Registered on `Base` by `bot.store.tables`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary
from sqlalchemy.orm import Mapped, mapped_column

from bot.store.base import Base


class EventRetryRow(Base):
    """An event whose handling failed: retried with backoff, then given up (audited).

    The event is kept as it was handled (decrypted if it was encrypted), sealed at rest;
    `last_error` names the failure (exception class, status), never the content.
    """

    __tablename__ = "event_retries"

    event_id: Mapped[str] = mapped_column(primary_key=True)
    room_id: Mapped[str] = mapped_column(index=True)
    source_enc: Mapped[bytes] = mapped_column(LargeBinary)
    decrypted: Mapped[bool]
    attempts: Mapped[int]
    first_failed_at: Mapped[datetime]
    # None once the event is done (handled on a retry) or given up.
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    last_error: Mapped[str]
    given_up_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]


class GuardPendingRow(Base):
    """A demande room whose membership must be checked against its ledger (an intruder
    was seen, a kick failed, a state change was reverted): the guard worker's queue."""

    __tablename__ = "guard_pending"

    room_id: Mapped[str] = mapped_column(primary_key=True)
    since: Mapped[datetime]
    reason: Mapped[str]


class PendingInviteRow(Base):
    """An invitation recorded in the ledger and not yet confirmed sent."""

    __tablename__ = "pending_invites"

    room_id: Mapped[str] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(primary_key=True)
    since: Mapped[datetime]
    attempts: Mapped[int]
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_error: Mapped[str | None]


class WorkProblemRow(Base):
    """A piece of work that failed for a reason of its own (not an outage), e.g. a
    demande whose room cannot be built: retried with backoff, told once."""

    __tablename__ = "work_problems"

    kind: Mapped[str] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(primary_key=True)
    attempts: Mapped[int]
    first_failed_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str]
    notified_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]


class HistoryCopyRow(Base):
    """A participant who joined after the opening and is owed a copy of the exchange so
    far (recorded in the join's transaction, cleared in the one that queues the copy)."""

    __tablename__ = "history_copies"

    room_id: Mapped[str] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(primary_key=True)
    join_event_id: Mapped[str]
    since: Mapped[datetime]
