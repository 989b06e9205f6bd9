"""The lease of the active bot (two processes, one active; PostgreSQL only).

One row: who holds the lease, its epoch (strictly increasing, one per takeover) and
when it expires by the database's clock. `epoch` is unique so that PostgreSQL counts
it as a key column: a write transaction's `FOR KEY SHARE` on the row (the fence) does
not block the holder's renewals (which change `expires_at` only) but does block a
takeover (which changes `epoch`) until that transaction ends.

Revision ID: 0014_lease
Revises: 0013_daily_loop
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_lease"
down_revision: str | None = "0013_daily_loop"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "lease",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lease"),
        sa.UniqueConstraint("epoch", name="uq_lease_epoch"),
        sa.CheckConstraint("id = 1", name="ck_lease_one_row"),
    )


def downgrade() -> None:
    op.drop_table("lease")
