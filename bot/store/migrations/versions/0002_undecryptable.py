"""Undecryptable events: kept until their key arrives, with the key request and notice.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, TS, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "undecryptable_events",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("event_enc", sa.LargeBinary(), nullable=False),
        _ts("received_at"),
        _ts("key_requested_at", nullable=True),
        _ts("notice_at", nullable=True),
        _ts("decrypted_at", nullable=True),
        sa.PrimaryKeyConstraint("event_id", name="pk_undecryptable_events"),
    )
    op.create_index(
        "ix_undecryptable_events_decrypted_at", "undecryptable_events", ["decrypted_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_undecryptable_events_decrypted_at", table_name="undecryptable_events")
    op.drop_table("undecryptable_events")
