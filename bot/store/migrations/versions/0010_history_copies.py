"""The copies of the exchange owed to late joiners, as a table (was a JSON row).

Revision ID: 0010_history_copies
Revises: 0009_device_notices
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0010_history_copies"
down_revision: str | None = "0009_device_notices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
KEY = "history.pending"


def upgrade() -> None:
    op.create_table(
        "history_copies",
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("join_event_id", sa.Text(), nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.PrimaryKeyConstraint("room_id", "user_id", name="pk_history_copies"),
    )
    bind = op.get_bind()
    state = sa.table("bot_state", sa.column("key", sa.Text), sa.column("value", sa.Text))
    raw = bind.execute(sa.select(state.c.value).where(state.c.key == KEY)).scalar()
    copies = sa.table(
        "history_copies",
        sa.column("room_id", sa.Text),
        sa.column("user_id", sa.Text),
        sa.column("join_event_id", sa.Text),
        sa.column("since", TS),
    )
    seen = set()
    for item in json.loads(raw or "[]"):
        pair = (item["room_id"], item["user"])
        if pair in seen:
            continue
        seen.add(pair)
        bind.execute(
            sa.insert(copies).values(
                room_id=item["room_id"],
                user_id=item["user"],
                join_event_id=item["event_id"],
                since=datetime.now(UTC),
            )
        )
    bind.execute(sa.delete(state).where(state.c.key == KEY))


def downgrade() -> None:
    op.drop_table("history_copies")
