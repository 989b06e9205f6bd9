"""Alembic environment, driven from `bot.store.db`: the caller hands over an open
connection, already inside a transaction (no alembic.ini, no URL here)."""

from __future__ import annotations

from alembic import context

from bot.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through bot.store.db.upgrade(), not the alembic CLI.")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite can only ALTER by copying tables; batch mode lets later migrations do that.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
