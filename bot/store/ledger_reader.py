"""A read-only view of the committed ledger, for the homeserver guard's questions.

The guard's questions arrive while the bot waits for the homeserver (its createRoom
or /invite is what Synapse is checking), so answering must never wait for anything
the bot may hold. This reader has its own engine, apart from `Store`:

- SQLite: no `BEGIN IMMEDIATE` (the store's write lock), `query_only`, autocommit;
  in WAL mode a read never waits for a writer and sees the last commit.
- PostgreSQL: autocommit; a plain SELECT never waits for row locks.

Each lookup is one statement, so it reads one consistent snapshot. Only committed
rows are seen: the bot commits a participant before it invites them (tested).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.domain.guard import LedgerView
from bot.store.models import DemandeRow, ParticipantRow

# Reads are short; a locked database (a checkpoint, a restore) fails the answer fast,
# and the module refuses (fail closed) rather than stall an invite.
SQLITE_READ_BUSY_TIMEOUT_MS = 1000

_D = DemandeRow.__table__
_P = ParticipantRow.__table__


class LedgerReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @classmethod
    def open(cls, url: str) -> LedgerReader:
        return cls(_read_only_engine(url))

    async def close(self) -> None:
        await self._engine.dispose()

    async def view(self, *, room_id: str | None, reference: str | None) -> LedgerView | None:
        """The demande whose room is `room_id`, else the demande `reference` (whose room may
        be still in the making, or another one: the rules of `bot.domain.guard` decide)."""
        if room_id is not None:
            found = await self._one(_D.c.room_id == room_id)
            if found is not None:
                return found
        if reference is not None:
            return await self._one(_D.c.reference == reference)
        return None

    async def _one(self, where: Any) -> LedgerView | None:
        stmt = (
            select(_D.c.reference, _D.c.room_id, _P.c.matrix_id)
            .select_from(
                _D.outerjoin(_P, and_(_P.c.demande_id == _D.c.id, _P.c.removed_at.is_(None)))
            )
            .where(where)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        if not rows:
            return None
        reference, room_id = rows[0].reference, rows[0].room_id
        members = frozenset(r.matrix_id for r in rows if r.matrix_id)
        return LedgerView(reference=reference, room_id=room_id, members=members)


def _read_only_engine(url: str) -> AsyncEngine:
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_async_engine(url)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # autocommit: no transaction held
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_READ_BUSY_TIMEOUT_MS}")
            cursor.close()

        return engine
    return create_async_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
