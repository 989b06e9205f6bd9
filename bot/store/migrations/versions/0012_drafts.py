"""The demande in preparation, field by field, and the files sent with it.

Revision ID: 0012_drafts
Revises: 0010_history_copies
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_drafts"
down_revision: str | None = "0010_history_copies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "draft_inputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("aidant_agent_id", sa.Integer(), nullable=False),
        sa.Column("dm_room_id", sa.Text(), nullable=False),
        sa.Column("fields_enc", sa.LargeBinary(), nullable=False),
        sa.Column("asking", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_draft_inputs"),
        sa.UniqueConstraint(
            "aidant_agent_id", "dm_room_id", name="uq_draft_inputs_aidant_agent_id"
        ),
        sa.ForeignKeyConstraint(
            ["aidant_agent_id"], ["agents.id"], name="fk_draft_inputs_aidant_agent_id_agents"
        ),
    )
    op.create_table(
        "draft_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("input_id", sa.Integer(), nullable=True),
        sa.Column("demande_id", sa.Integer(), nullable=True),
        sa.Column("meta_enc", sa.LargeBinary(), nullable=False),
        sa.Column("data_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_draft_files"),
        sa.ForeignKeyConstraint(
            ["input_id"], ["draft_inputs.id"], name="fk_draft_files_input_id_draft_inputs"
        ),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_draft_files_demande_id_demandes"
        ),
    )
    op.create_index("ix_draft_files_input_id", "draft_files", ["input_id"])
    op.create_index("ix_draft_files_demande_id", "draft_files", ["demande_id"])


def downgrade() -> None:
    op.drop_index("ix_draft_files_demande_id", table_name="draft_files")
    op.drop_index("ix_draft_files_input_id", table_name="draft_files")
    op.drop_table("draft_files")
    op.drop_table("draft_inputs")
