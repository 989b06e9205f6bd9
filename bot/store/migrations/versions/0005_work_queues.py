"""Work queues as tables: events to retry, rooms to guard, invitations, problems.

The guard's rooms and the pending invitations were JSON lists in `bot_state` rows;
they are moved into their tables here, and the rows dropped. An email may now be for
no demande (a reminder or the digest to an email-only agent).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
GUARD_KEY = "guard.pending_rooms"
INVITES_KEY = "invites.pending"


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, TS, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "event_retries",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("source_enc", sa.LargeBinary(), nullable=False),
        sa.Column("decrypted", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("first_failed_at"),
        _ts("next_attempt_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        _ts("given_up_at", nullable=True),
        _ts("done_at", nullable=True),
        sa.PrimaryKeyConstraint("event_id", name="pk_event_retries"),
    )
    op.create_index("ix_event_retries_room_id", "event_retries", ["room_id"])
    op.create_index("ix_event_retries_next_attempt_at", "event_retries", ["next_attempt_at"])
    op.create_table(
        "guard_pending",
        sa.Column("room_id", sa.Text(), nullable=False),
        _ts("since"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", name="pk_guard_pending"),
    )
    op.create_table(
        "pending_invites",
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        _ts("since"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("room_id", "user_id", name="pk_pending_invites"),
    )
    op.create_index("ix_pending_invites_next_attempt_at", "pending_invites", ["next_attempt_at"])
    op.create_table(
        "work_problems",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("first_failed_at"),
        _ts("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=False),
        _ts("notified_at", nullable=True),
        _ts("resolved_at", nullable=True),
        sa.PrimaryKeyConstraint("kind", "key", name="pk_work_problems"),
    )
    with op.batch_alter_table("email_outbox") as batch:
        batch.alter_column("demande_id", existing_type=sa.Integer(), nullable=True)
    _move_json_queues()


def _move_json_queues() -> None:
    bind = op.get_bind()
    state = sa.table("bot_state", sa.column("key", sa.Text), sa.column("value", sa.Text))
    now = datetime.now(UTC)
    rows = dict(
        bind.execute(
            sa.select(state.c.key, state.c.value).where(state.c.key.in_([GUARD_KEY, INVITES_KEY]))
        ).all()
    )
    guard = sa.table(
        "guard_pending",
        sa.column("room_id", sa.Text),
        sa.column("since", TS),
        sa.column("reason", sa.Text),
    )
    for room_id in json.loads(rows.get(GUARD_KEY) or "[]"):
        bind.execute(sa.insert(guard).values(room_id=room_id, since=now, reason="migrated"))
    invites = sa.table(
        "pending_invites",
        sa.column("room_id", sa.Text),
        sa.column("user_id", sa.Text),
        sa.column("since", TS),
        sa.column("attempts", sa.Integer),
        sa.column("next_attempt_at", TS),
    )
    for item in json.loads(rows.get(INVITES_KEY) or "[]"):
        room_id, user_id = str(item).split(" ", 1)
        bind.execute(
            sa.insert(invites).values(
                room_id=room_id, user_id=user_id, since=now, attempts=0, next_attempt_at=now
            )
        )
    bind.execute(sa.delete(state).where(state.c.key.in_([GUARD_KEY, INVITES_KEY])))


def downgrade() -> None:
    with op.batch_alter_table("email_outbox") as batch:
        batch.alter_column("demande_id", existing_type=sa.Integer(), nullable=False)
    op.drop_table("work_problems")
    op.drop_index("ix_pending_invites_next_attempt_at", table_name="pending_invites")
    op.drop_table("pending_invites")
    op.drop_table("guard_pending")
    op.drop_index("ix_event_retries_next_attempt_at", table_name="event_retries")
    op.drop_index("ix_event_retries_room_id", table_name="event_retries")
    op.drop_table("event_retries")
