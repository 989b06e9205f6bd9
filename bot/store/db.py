"""Engine, transactions and schema upgrades.

One `Store` per event loop: an async engine's pooled connections belong to the
loop that created them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bot.domain.lease import LeaseLost
from bot.domain.scope import OperatorScope
from bot.store import tables  # noqa: F401 (registers every table)
from bot.store.crypto import FieldCipher
from bot.store.repository import Tx
from bot.store.scoped_tx import ScopedTx

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Serialises concurrent upgrades of one PostgreSQL database (two bot processes starting).
_PG_MIGRATION_LOCK = 0x41504C55  # "APLU"

# The fence of two processes, one active (`bot.services.lease`): the epoch this process
# holds the lease with, or None while it is the standby (its transactions are then
# READ ONLY: it answers questions, it writes nothing).
Fence = Callable[[], int | None]


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configured in code: no alembic.ini needed at runtime."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade_sync(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    command.upgrade(alembic_config(connection), "head")


def _revision_sync(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver, whose implicit BEGIN
        # leaves reads outside the transaction and DDL uncommitted.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # synchronous stays FULL: a commit must survive power loss (we answer 250 to SMTP).
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads
        # then writes can fail with SQLITE_BUSY without waiting for busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, application_name: str | None = None) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(
                "La base SQLite doit être un fichier (chaque connexion verrait sinon "
                "une base vide différente)."
            )
        engine = create_async_engine(url)
        _configure_sqlite(engine)
        return engine
    # pre_ping: after a database restart, stale pooled connections are replaced
    # instead of failing the next transaction.
    # application_name names the process (its lease holder) in pg_stat_activity: a
    # takeover terminates a frozen holder's connections by that name.
    connect_args = {"server_settings": {"application_name": application_name}}
    return create_async_engine(
        url, pool_pre_ping=True, connect_args=connect_args if application_name else {}
    )


class Store:
    def __init__(
        self,
        engine: AsyncEngine,
        cipher: FieldCipher,
        fence: Fence | None = None,
        scope: OperatorScope | None = None,
    ) -> None:
        self._engine = engine
        self._cipher = cipher
        self._dialect = engine.dialect.name
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._fence = fence
        self._scope = scope
        # SQLite: this process's open transactions (task, start), named when one of
        # them finds the write lock held past busy_timeout (by whom is then the question).
        self._open: dict[int, tuple[asyncio.Task[Any] | None, float]] = {}

    def scoped(self, scope: OperatorScope) -> Store:
        """The same database seen by a territorial operator (`ScopedTx`); a national
        scope is the store itself. Never closed: the engine is this store's."""
        if scope.national:
            return self
        scoped = Store(self._engine, self._cipher, self._fence, scope)
        scoped._open = self._open  # one account of the engine's open transactions
        return scoped

    @classmethod
    async def open(
        cls,
        url: str,
        cipher: FieldCipher,
        *,
        fence: Fence | None = None,
        application_name: str | None = None,
    ) -> Store:
        """Connects and upgrades the schema to the latest migration.

        With a `fence` (PostgreSQL), every transaction first checks that this process
        still holds the lease's epoch, and holds the lease row against a takeover
        until it ends: a stale holder's transaction fails before it writes anything.
        """
        engine = create_engine(url, application_name)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_sync)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, cipher, fence)

    @classmethod
    async def connect(cls, url: str, cipher: FieldCipher) -> Store:
        """Connects without touching the schema (`aplus check`: nothing changes)."""
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, cipher)

    @property
    def dialect(self) -> str:
        return self._dialect

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def close(self) -> None:
        await self._engine.dispose()

    async def ping(self) -> None:
        """Raises if the database cannot answer (for the health endpoint)."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One transaction: committed on normal exit, rolled back on exception."""
        async with self._sessions() as session:
            key = id(session)
            self._open[key] = (asyncio.current_task(), time.monotonic())
            try:
                async with session.begin():
                    if self._fence is not None:
                        await self._check_fence(session, self._fence())
                    tx = (
                        ScopedTx(session, self._cipher, self._dialect, self._scope)
                        if self._scope is not None
                        else Tx(session, self._cipher, self._dialect)
                    )
                    yield tx
            except OperationalError as exc:
                if self._dialect == "sqlite" and "locked" in str(exc.orig):
                    log.warning("database locked; open transactions: %s", self._holders(key))
                raise
            finally:
                del self._open[key]
            tx.committed()  # reached only once the commit succeeded

    def open_transactions(self) -> list[str]:
        """This store's transactions not ended yet (none once the app is closed)."""
        return self._describe(self._open)

    def _holders(self, waiting: int) -> str:
        """The other open transactions: task name, age, where each one waits now (code
        locations only: no data)."""
        others = {k: v for k, v in self._open.items() if k != waiting}
        return "; ".join(self._describe(others)) or "none in this process"

    @staticmethod
    def _describe(open_: dict[int, tuple[asyncio.Task[Any] | None, float]]) -> list[str]:
        now = time.monotonic()
        described = []
        for task, started in open_.values():
            where = "?"
            if task is not None:
                frames = task.get_stack()
                ours = [f for f in frames if "site-packages" not in f.f_code.co_filename]
                if frames:
                    frame = (ours or frames)[-1]
                    code = frame.f_code
                    where = f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}"
            name = task.get_name() if task is not None else "?"
            described.append(f"{name} ({now - started:.1f} s, at {where})")
        return described

    @staticmethod
    async def _check_fence(session: AsyncSession, epoch: int | None) -> None:
        if epoch is None:
            await session.execute(text("SET TRANSACTION READ ONLY"))
            return
        # FOR KEY SHARE: renewals (expires_at) pass, a takeover (epoch, a key column)
        # waits for this transaction's end, or terminates it (bot.store.lease).
        held = await session.execute(
            text("SELECT 1 FROM lease WHERE id = 1 AND epoch = :epoch FOR KEY SHARE"),
            {"epoch": epoch},
        )
        if held.first() is None:
            raise LeaseLost(f"epoch {epoch} is no longer the lease's")

    async def current_revision(self) -> str | None:
        async with self._engine.connect() as conn:
            return await conn.run_sync(_revision_sync)


async def _upgrade_async(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_sync)
    finally:
        await engine.dispose()


async def _revision_async(url: str) -> str | None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_revision_sync)
    finally:
        await engine.dispose()


def upgrade(url: str) -> None:
    """Upgrades the schema to head (for the CLI; runs its own event loop)."""
    asyncio.run(_upgrade_async(url))


def current_revision(url: str) -> str | None:
    """The database's migration revision, None if never migrated (for the CLI)."""
    return asyncio.run(_revision_async(url))
