"""Email-only agents: a demande's emails stopped per agent, the daily digest.

Revision ID: 0016_email_only
Revises: 0015_onboarding
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_email_only"
down_revision: str | None = "0015_onboarding"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # None: every email at once (the default); an hour (Paris): one digest a day per demande.
    with op.batch_alter_table("email_preferences") as batch:
        batch.add_column(sa.Column("digest_hour", sa.Integer(), nullable=True))
    op.create_table(
        "email_demande_mutes",
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_email_demande_mutes_demande_id_demandes"
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_email_demande_mutes_agent_id_agents"
        ),
        sa.PrimaryKeyConstraint("demande_id", "agent_id", name="pk_email_demande_mutes"),
    )
    op.create_table(
        "email_digest_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("event_key", sa.Text(), nullable=False),
        sa.Column("body_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_email_digest_items_agent_id_agents"
        ),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_email_digest_items_demande_id_demandes"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_email_digest_items"),
        sa.UniqueConstraint("event_key", "agent_id", name="uq_email_digest_items_event_key"),
    )
    op.create_index("ix_email_digest_items_sent_at", "email_digest_items", ["sent_at"])


def downgrade() -> None:
    op.drop_index("ix_email_digest_items_sent_at", table_name="email_digest_items")
    op.drop_table("email_digest_items")
    op.drop_table("email_demande_mutes")
    with op.batch_alter_table("email_preferences") as batch:
        batch.drop_column("digest_hour")
