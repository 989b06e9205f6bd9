"""Tables of the email bridge (revision 0003). Registered on `Base` by `bot.store.tables`.

Message bodies, in both directions, hold the usager's data: they are only
stored sealed by the `FieldCipher` (``*_enc``). Addresses are agents'
professional addresses (directory data), kept in clear to route and audit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from bot.store.base import Base, _in

INBOX_STATES = ("pending", "posted", "ignored", "bounce", "loop", "empty", "dropped")


class ReplyTokenRow(Base):
    """A reply address `reply+<token>@…`: only the token's digest is kept."""

    __tablename__ = "email_reply_tokens"
    __table_args__ = (UniqueConstraint("demande_id", "agent_email", "generation"),)

    digest: Mapped[str] = mapped_column(primary_key=True)
    demande_id: Mapped[int] = mapped_column(ForeignKey("demandes.id"), index=True)
    agent_email: Mapped[str]
    generation: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class EmailOutboxRow(Base):
    """One email to one recipient, for one bridged event (or a synthetic key)."""

    __tablename__ = "email_outbox"
    __table_args__ = (
        UniqueConstraint("event_key", "recipient"),
        Index("ix_email_outbox_due", "delivered_at", "failed_at", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_key: Mapped[str]
    recipient: Mapped[str]
    kind: Mapped[str]
    # None: an email to one agent that belongs to no demande (a reminder, the digest).
    demande_id: Mapped[int | None] = mapped_column(ForeignKey("demandes.id"), index=True)
    author: Mapped[str | None]
    message_id: Mapped[str] = mapped_column(index=True)
    envelope_from: Mapped[str]
    message_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    last_error: Mapped[str | None]


class EmailInboxRow(Base):
    """A message our listener answered 250 to: committed before that answer."""

    __tablename__ = "email_inbox"
    __table_args__ = (
        UniqueConstraint("token_digest", "message_id"),
        CheckConstraint(_in("state", INBOX_STATES), name="state"),
        Index("ix_email_inbox_dedup", "token_digest", "content_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(unique=True)  # stable, public: txn IDs derive from it
    token_digest: Mapped[str]
    demande_id: Mapped[int] = mapped_column(ForeignKey("demandes.id"))
    agent_email: Mapped[str]
    sender: Mapped[str | None]
    message_id: Mapped[str | None]
    content_hash: Mapped[str]
    kind: Mapped[str]
    state: Mapped[str] = mapped_column(index=True)
    size: Mapped[int] = mapped_column(Integer)
    raw_enc: Mapped[bytes] = mapped_column(LargeBinary)
    uploads_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    parsed_enc: Mapped[bytes | None] = mapped_column(LargeBinary)  # what the listener parsed
    received_at: Mapped[datetime]
    posted_at: Mapped[datetime | None]
    event_id: Mapped[str | None]


class EmailFailureRow(Base):
    """A recipient whose mail was refused or bounced (latest reason kept)."""

    __tablename__ = "email_failures"

    recipient: Mapped[str] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    last_reason: Mapped[str]


class EmailPreferenceRow(Base):
    """An agent's email choices: a Matrix agent's notices of new messages (notice only);
    how often an agent gets a demande's emails (revision 0016)."""

    __tablename__ = "email_preferences"

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    notify: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime]
    # None: every email at once; an hour (Paris time): one digest a day per demande.
    digest_hour: Mapped[int | None] = mapped_column(Integer)


class EmailDemandeMuteRow(Base):
    """An agent who stopped the emails of one demande (`!notifications non` by email)."""

    __tablename__ = "email_demande_mutes"

    demande_id: Mapped[int] = mapped_column(ForeignKey("demandes.id"), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    created_at: Mapped[datetime]


class EmailDigestItemRow(Base):
    """One email held for an agent's daily digest; the body sealed like the outbox's."""

    __tablename__ = "email_digest_items"
    __table_args__ = (UniqueConstraint("event_key", "agent_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    demande_id: Mapped[int] = mapped_column(ForeignKey("demandes.id"))
    event_key: Mapped[str]
    body_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(index=True)
