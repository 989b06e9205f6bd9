"""Tables. The migrations in `migrations/versions` must produce exactly this schema
(an integration test compares them with Alembic's autogenerate).

Columns ending in ``_enc`` hold `FieldCipher` blobs: anything that can identify
the usager, or that may carry the dossier, is only stored that way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    LargeBinary,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.store.base import Base, _in, utcnow

__all__ = ["Base", "utcnow"]

DRAFT_STATES = ("pending", "confirmed", "cancelled")
CREATION_STEPS = ("pending", "room_created", "invited", "ready")
PARTICIPANT_KINDS = ("aidant", "instructeur", "invite")
STATUSES = ("nouvelle", "en_cours", "traitee", "cloturee")
USEFULNESS = ("utile", "nesaispas", "inutile")


class GroupRow(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    organisation_id: Mapped[str]
    departements: Mapped[str]  # sorted, comma-joined codes
    bal: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentRow(Base):
    __tablename__ = "agents"
    __table_args__ = (
        CheckConstraint("email IS NOT NULL OR matrix_id IS NOT NULL", name="reachable"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_name: Mapped[str]
    last_name: Mapped[str]
    email: Mapped[str | None] = mapped_column(unique=True)  # stored lower-cased
    matrix_id: Mapped[str | None] = mapped_column(unique=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id"))
    roles: Mapped[str]  # sorted, comma-joined Role values
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DraftRow(Base):
    __tablename__ = "drafts"
    __table_args__ = (CheckConstraint(_in("state", DRAFT_STATES), name="state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    aidant_agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    dm_room_id: Mapped[str]
    form_enc: Mapped[bytes] = mapped_column(LargeBinary)
    group_ids: Mapped[list[int]] = mapped_column(JSON)
    state: Mapped[str]
    demande_id: Mapped[int | None] = mapped_column(ForeignKey("demandes.id", use_alter=True))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DemandeRow(Base):
    __tablename__ = "demandes"
    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="status"),
        CheckConstraint(_in("creation_step", CREATION_STEPS), name="creation_step"),
        CheckConstraint(f"usefulness IS NULL OR {_in('usefulness', USEFULNESS)}", name="useful"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(unique=True)
    territoire: Mapped[str]
    organisations: Mapped[str]  # comma-joined, in the form's order
    categorie: Mapped[str | None]
    objet_enc: Mapped[bytes] = mapped_column(LargeBinary)
    dossier_enc: Mapped[bytes] = mapped_column(LargeBinary)  # usager + description + mandat
    aidant_agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    status: Mapped[str]
    created_at: Mapped[datetime]
    first_answer_at: Mapped[datetime | None]
    last_answer_at: Mapped[datetime | None]
    treated_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    reopened_at: Mapped[datetime | None]
    usefulness: Mapped[str | None]
    room_id: Mapped[str | None] = mapped_column(unique=True)
    creation_step: Mapped[str]
    dossier_event_id: Mapped[str | None]
    draft_id: Mapped[int | None] = mapped_column(ForeignKey("drafts.id"), unique=True)

    groups: Mapped[list[DemandeGroupRow]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="DemandeGroupRow.group_id"
    )


class DemandeGroupRow(Base):
    __tablename__ = "demande_groups"

    demande_id: Mapped[int] = mapped_column(ForeignKey("demandes.id"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), primary_key=True)


class ReferenceCounterRow(Base):
    __tablename__ = "reference_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(Integer)


class ParticipantRow(Base):
    __tablename__ = "participants"
    __table_args__ = (
        UniqueConstraint("demande_id", "agent_id"),
        CheckConstraint(_in("kind", PARTICIPANT_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    demande_id: Mapped[int] = mapped_column(ForeignKey("demandes.id"))
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    # Copied from the directory when added: the ledger says who was let in, as they were.
    matrix_id: Mapped[str | None]
    email: Mapped[str | None]
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id"))
    kind: Mapped[str]
    added_at: Mapped[datetime]
    added_by: Mapped[str]
    removed_at: Mapped[datetime | None]


class ProcessedEventRow(Base):
    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(primary_key=True)
    room_id: Mapped[str]
    processed_at: Mapped[datetime]


class OutboxMessageRow(Base):
    __tablename__ = "outbox_messages"

    txn_id: Mapped[str] = mapped_column(primary_key=True)
    room_id: Mapped[str] = mapped_column(index=True)
    content_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    event_id: Mapped[str | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class RoomOffenceRow(Base):
    __tablename__ = "room_offences"

    room_id: Mapped[str] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[datetime]


class AuditRow(Base):
    """Append-only: database triggers (see the initial migration) refuse UPDATE/DELETE."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str]
    action: Mapped[str] = mapped_column(index=True)
    reference: Mapped[str | None] = mapped_column(index=True)
    details: Mapped[dict[str, Any]]


class BotStateRow(Base):
    __tablename__ = "bot_state"

    key: Mapped[str] = mapped_column(primary_key=True)
    value: Mapped[str]


class BotSecretRow(Base):
    __tablename__ = "bot_secrets"

    key: Mapped[str] = mapped_column(primary_key=True)
    value_enc: Mapped[bytes] = mapped_column(LargeBinary)
