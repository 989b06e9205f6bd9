"""Audit retention: DELETE of audit entries only through an explicit permit.

The audit stays append-only for the application: UPDATE and TRUNCATE are always
refused, and DELETE is refused unless the same transaction has written the row
``bot_state['audit.purge_before']`` and the entry is older than that cutoff.
Only `Tx.purge_audit_before` writes that row, removes it before committing, and
the retention job audits each purge.

Revision ID: 0004
Revises: 0003
Create Date: 2026-03-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The permit row `Tx.purge_audit_before` writes: bot_state["audit.purge_before"].


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER audit_no_delete")
        # `at` is stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): text order is time order.
        op.execute(
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
            "WHEN NOT EXISTS (SELECT 1 FROM bot_state "
            "WHERE key = 'audit.purge_before' AND OLD.at < value) "
            "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"
        )
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND EXISTS (
                SELECT 1 FROM bot_state
                WHERE key = 'audit.purge_before' AND OLD.at < value::timestamptz
            ) THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'audit is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER audit_no_delete")
        op.execute(
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END"
        )
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
