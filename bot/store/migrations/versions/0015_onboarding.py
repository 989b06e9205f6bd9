"""Onboarding: welcomes sent, agents' last activity, territorial operators' scopes.

Agents already in the directory count as welcomed (on the channel they have), so that
the first start with this revision greets only the agents added afterwards.

Revision ID: 0015_onboarding
Revises: 0013_daily_loop
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_onboarding"
down_revision: str | None = "0014_lease"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agent_welcomes",
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("welcomed_at", TS, nullable=False),
        sa.CheckConstraint("channel IN ('matrix', 'email')", name="ck_agent_welcomes_channel"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_welcomes_agent_id_agents"
        ),
        sa.PrimaryKeyConstraint("agent_id", "channel", name="pk_agent_welcomes"),
    )
    op.create_table(
        "agent_activity",
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("last_active_at", TS, nullable=False),
        sa.Column("warned_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_activity_agent_id_agents"
        ),
        sa.PrimaryKeyConstraint("agent_id", name="pk_agent_activity"),
    )
    op.create_table(
        "operator_scopes",
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("departements", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_operator_scopes_agent_id_agents"
        ),
        sa.PrimaryKeyConstraint("agent_id", name="pk_operator_scopes"),
    )
    op.execute(
        "INSERT INTO agent_welcomes (agent_id, channel, welcomed_at) "
        "SELECT id, CASE WHEN matrix_id IS NULL THEN 'email' ELSE 'matrix' END, "
        "CURRENT_TIMESTAMP FROM agents"
    )


def downgrade() -> None:
    op.drop_table("operator_scopes")
    op.drop_table("agent_activity")
    op.drop_table("agent_welcomes")
