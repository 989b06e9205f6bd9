"""Email bridge: reply tokens (digests only), outbox, inbox, failure marks, preferences.

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, TS, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "email_reply_tokens",
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("agent_email", sa.Text(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("digest", name="pk_email_reply_tokens"),
        sa.UniqueConstraint(
            "demande_id",
            "agent_email",
            "generation",
            name="uq_email_reply_tokens_demande_id",
        ),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_email_reply_tokens_demande_id_demandes"
        ),
    )
    op.create_index("ix_email_reply_tokens_demande_id", "email_reply_tokens", ["demande_id"])

    op.create_table(
        "email_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_key", sa.Text(), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("author", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("envelope_from", sa.Text(), nullable=False),
        sa.Column("message_enc", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at"),
        _ts("delivered_at", nullable=True),
        _ts("failed_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_email_outbox"),
        sa.UniqueConstraint("event_key", "recipient", name="uq_email_outbox_event_key"),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_email_outbox_demande_id_demandes"
        ),
    )
    op.create_index("ix_email_outbox_demande_id", "email_outbox", ["demande_id"])
    op.create_index("ix_email_outbox_message_id", "email_outbox", ["message_id"])
    op.create_index(
        "ix_email_outbox_due", "email_outbox", ["delivered_at", "failed_at", "next_attempt_at"]
    )

    op.create_table(
        "email_inbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("token_digest", sa.Text(), nullable=False),
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("agent_email", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("raw_enc", sa.LargeBinary(), nullable=False),
        sa.Column("uploads_enc", sa.LargeBinary(), nullable=True),
        _ts("received_at"),
        _ts("posted_at", nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_email_inbox"),
        sa.UniqueConstraint("key", name="uq_email_inbox_key"),
        sa.UniqueConstraint("token_digest", "message_id", name="uq_email_inbox_token_digest"),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_email_inbox_demande_id_demandes"
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'posted', 'ignored', 'bounce', 'loop', 'empty', 'dropped')",
            name="ck_email_inbox_state",
        ),
    )
    op.create_index("ix_email_inbox_state", "email_inbox", ["state"])
    op.create_index("ix_email_inbox_dedup", "email_inbox", ["token_digest", "content_hash"])

    op.create_table(
        "email_failures",
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        _ts("first_at"),
        _ts("last_at"),
        sa.Column("last_reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("recipient", name="pk_email_failures"),
    )
    op.create_table(
        "email_preferences",
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("notify", sa.Boolean(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("agent_id", name="pk_email_preferences"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_email_preferences_agent_id_agents"
        ),
    )


def downgrade() -> None:
    for table in (
        "email_preferences",
        "email_failures",
        "email_inbox",
        "email_outbox",
        "email_reply_tokens",
    ):
        op.drop_table(table)
