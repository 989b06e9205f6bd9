"""Sessions told, once, that they get no room key until their owner verifies them.

Revision ID: 0009_device_notices
Revises: 0008_identity_pins
Create Date: 2026-03-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_device_notices"
down_revision: str | None = "0008_identity_pins"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_notices",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("told_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", name="pk_device_notices"),
    )


def downgrade() -> None:
    op.drop_table("device_notices")
