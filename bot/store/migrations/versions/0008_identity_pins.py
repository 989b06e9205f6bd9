"""Participants' cross-signing identities, pinned on first sight (trust on first use).

Revision ID: 0008_identity_pins
Revises: 0007_room_keys
Create Date: 2026-03-12
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_identity_pins"
down_revision: str | None = "0007_room_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "identity_pins",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("master_key", sa.Text(), nullable=False),
        sa.Column("pinned_at", TS, nullable=False),
        sa.Column("pending_master_key", sa.Text(), nullable=True),
        sa.Column("pending_since", TS, nullable=True),
        sa.PrimaryKeyConstraint("user_id", name="pk_identity_pins"),
    )


def downgrade() -> None:
    op.drop_table("identity_pins")
