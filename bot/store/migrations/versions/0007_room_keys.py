"""The bot's Megolm session keys, kept for participants' devices that appear later.

Revision ID: 0007_room_keys
Revises: 0006_inbox_parsed
Create Date: 2026-03-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_room_keys"
down_revision: str | None = "0006_inbox_parsed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "room_keys",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("first_index", sa.Integer(), nullable=False),
        sa.Column("session_key_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "user_id", name="pk_room_keys"),
    )
    op.create_index("ix_room_keys_user_id", "room_keys", ["user_id"])
    op.create_index("ix_room_keys_room_id", "room_keys", ["room_id"])
    op.create_table(
        "room_key_deliveries",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        sa.Column("delivered_at", TS, nullable=False),
        sa.PrimaryKeyConstraint(
            "session_id", "user_id", "device_id", name="pk_room_key_deliveries"
        ),
    )


def downgrade() -> None:
    op.drop_table("room_key_deliveries")
    op.drop_index("ix_room_keys_room_id", table_name="room_keys")
    op.drop_index("ix_room_keys_user_id", table_name="room_keys")
    op.drop_table("room_keys")
