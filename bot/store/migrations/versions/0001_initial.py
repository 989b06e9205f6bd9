"""Initial schema: directory, drafts, demandes, participants, idempotency, outbox,
room guard, append-only audit, bot state and secrets.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from models: a migration must keep meaning
# what it meant when it was written, whatever the models become.
TS = sa.DateTime(timezone=True)


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, TS, nullable=nullable)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"

    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("organisation_id", sa.Text(), nullable=False),
        sa.Column("departements", sa.Text(), nullable=False),
        sa.Column("bal", sa.Text(), nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_groups"),
        sa.UniqueConstraint("name", name="uq_groups_name"),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("first_name", sa.Text(), nullable=False),
        sa.Column("last_name", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("matrix_id", sa.Text(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.UniqueConstraint("email", name="uq_agents_email"),
        sa.UniqueConstraint("matrix_id", name="uq_agents_matrix_id"),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name="fk_agents_group_id_groups"),
        sa.CheckConstraint(
            "email IS NOT NULL OR matrix_id IS NOT NULL", name="ck_agents_reachable"
        ),
    )

    # drafts.demande_id and demandes.draft_id point at each other. SQLite accepts a
    # forward reference; PostgreSQL gets that foreign key once demandes exists.
    draft_to_demande = sa.ForeignKeyConstraint(
        ["demande_id"], ["demandes.id"], name="fk_drafts_demande_id_demandes"
    )
    op.create_table(
        "drafts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("aidant_agent_id", sa.Integer(), nullable=False),
        sa.Column("dm_room_id", sa.Text(), nullable=False),
        sa.Column("form_enc", sa.LargeBinary(), nullable=False),
        sa.Column("group_ids", sa.JSON(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("demande_id", sa.Integer(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_drafts"),
        sa.ForeignKeyConstraint(
            ["aidant_agent_id"], ["agents.id"], name="fk_drafts_aidant_agent_id_agents"
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'confirmed', 'cancelled')", name="ck_drafts_state"
        ),
        *([draft_to_demande] if sqlite else []),
    )
    op.create_index("ix_drafts_aidant_agent_id", "drafts", ["aidant_agent_id"])

    op.create_table(
        "demandes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("territoire", sa.Text(), nullable=False),
        sa.Column("organisations", sa.Text(), nullable=False),
        sa.Column("categorie", sa.Text(), nullable=True),
        sa.Column("objet_enc", sa.LargeBinary(), nullable=False),
        sa.Column("dossier_enc", sa.LargeBinary(), nullable=False),
        sa.Column("aidant_agent_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        _ts("created_at"),
        _ts("first_answer_at", nullable=True),
        _ts("last_answer_at", nullable=True),
        _ts("treated_at", nullable=True),
        _ts("closed_at", nullable=True),
        _ts("reopened_at", nullable=True),
        sa.Column("usefulness", sa.Text(), nullable=True),
        sa.Column("room_id", sa.Text(), nullable=True),
        sa.Column("creation_step", sa.Text(), nullable=False),
        sa.Column("dossier_event_id", sa.Text(), nullable=True),
        sa.Column("draft_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_demandes"),
        sa.UniqueConstraint("reference", name="uq_demandes_reference"),
        sa.UniqueConstraint("room_id", name="uq_demandes_room_id"),
        sa.UniqueConstraint("draft_id", name="uq_demandes_draft_id"),
        sa.ForeignKeyConstraint(
            ["aidant_agent_id"], ["agents.id"], name="fk_demandes_aidant_agent_id_agents"
        ),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"], name="fk_demandes_draft_id_drafts"),
        sa.CheckConstraint(
            "status IN ('nouvelle', 'en_cours', 'traitee', 'cloturee')", name="ck_demandes_status"
        ),
        sa.CheckConstraint(
            "creation_step IN ('pending', 'room_created', 'invited', 'ready')",
            name="ck_demandes_creation_step",
        ),
        sa.CheckConstraint(
            "usefulness IS NULL OR usefulness IN ('utile', 'nesaispas', 'inutile')",
            name="ck_demandes_useful",
        ),
    )
    op.create_index("ix_demandes_aidant_agent_id", "demandes", ["aidant_agent_id"])
    if not sqlite:
        op.create_foreign_key(
            "fk_drafts_demande_id_demandes", "drafts", "demandes", ["demande_id"], ["id"]
        )

    op.create_table(
        "demande_groups",
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("demande_id", "group_id", name="pk_demande_groups"),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_demande_groups_demande_id_demandes"
        ),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name="fk_demande_groups_group_id_groups"
        ),
    )
    op.create_table(
        "reference_counters",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("year", name="pk_reference_counters"),
    )
    op.create_table(
        "participants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("matrix_id", sa.Text(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        _ts("added_at"),
        sa.Column("added_by", sa.Text(), nullable=False),
        _ts("removed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_participants"),
        sa.UniqueConstraint("demande_id", "agent_id", name="uq_participants_demande_id"),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_participants_demande_id_demandes"
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_participants_agent_id_agents"
        ),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name="fk_participants_group_id_groups"
        ),
        sa.CheckConstraint(
            "kind IN ('aidant', 'instructeur', 'invite')", name="ck_participants_kind"
        ),
    )
    op.create_index("ix_participants_agent_id", "participants", ["agent_id"])

    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        _ts("processed_at"),
        sa.PrimaryKeyConstraint("event_id", name="pk_processed_events"),
    )
    op.create_table(
        "outbox_messages",
        sa.Column("txn_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("content_enc", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        _ts("sent_at", nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("txn_id", name="pk_outbox_messages"),
    )
    op.create_index("ix_outbox_messages_room_id", "outbox_messages", ["room_id"])
    op.create_table(
        "room_offences",
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        _ts("last_at"),
        sa.PrimaryKeyConstraint("room_id", "user_id", name="pk_room_offences"),
    )

    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False),
        _ts("at"),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_action", "audit", ["action"])
    op.create_index("ix_audit_reference", "audit", ["reference"])
    _make_audit_append_only(sqlite)

    op.create_table(
        "bot_state",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_bot_state"),
    )
    op.create_table(
        "bot_secrets",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value_enc", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_bot_secrets"),
    )


def _make_audit_append_only(sqlite: bool) -> None:
    # The audit trail must not be rewritable by the application, even by a bug.
    # Retention (deleting entries past their legal lifetime) will come as its own
    # explicit path — e.g. a SECURITY DEFINER function or a migration that lets the
    # trigger through under a dedicated setting — never as an ordinary DELETE.
    if sqlite:
        op.execute(
            "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"
        )
        return
    op.execute(
        """
        CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON audit "
        "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
    )
    # Row triggers do not fire on TRUNCATE.
    op.execute(
        "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if not sqlite:
        op.drop_constraint("fk_drafts_demande_id_demandes", "drafts", type_="foreignkey")
    for table in (
        "bot_secrets",
        "bot_state",
        "audit",
        "room_offences",
        "outbox_messages",
        "processed_events",
        "participants",
        "reference_counters",
        "demande_groups",
        "demandes",
        "drafts",
        "agents",
        "groups",
    ):
        op.drop_table(table)
    if not sqlite:
        op.execute("DROP FUNCTION audit_append_only()")
