"""The instructeurs' companion room of a demande; the « procédure standard » flag.

Revision ID: 0013_daily_loop
Revises: 0012_drafts
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_daily_loop"
down_revision: str | None = "0012_drafts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "companion_rooms",
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_companion_rooms_demande_id_demandes"
        ),
        sa.PrimaryKeyConstraint("demande_id", name="pk_companion_rooms"),
        sa.UniqueConstraint("room_id", name="uq_companion_rooms_room_id"),
    )
    op.create_table(
        "procedure_standard",
        sa.Column("demande_id", sa.Integer(), nullable=False),
        sa.Column("flagged_by", sa.Text(), nullable=False),
        sa.Column("flagged_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["demande_id"], ["demandes.id"], name="fk_procedure_standard_demande_id_demandes"
        ),
        sa.PrimaryKeyConstraint("demande_id", name="pk_procedure_standard"),
    )


def downgrade() -> None:
    op.drop_table("procedure_standard")
    op.drop_table("companion_rooms")
