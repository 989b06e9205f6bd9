"""The inbox keeps what the listener parsed (sealed), so posting never parses again.

Revision ID: 0006_inbox_parsed
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_inbox_parsed"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for rows accepted before: posting parses those from their raw bytes.
    with op.batch_alter_table("email_inbox") as batch:
        batch.add_column(sa.Column("parsed_enc", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("email_inbox") as batch:
        batch.drop_column("parsed_enc")
