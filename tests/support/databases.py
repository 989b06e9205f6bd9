"""The database of every bot a test starts: SQLite or PostgreSQL, one fresh database each.

Every test that can reach a bot's database (tests/integration, tests/mta, and any test
using the store fixtures) runs once per backend: tests/conftest.py parametrizes the
autouse `db_backend` fixture, whose ids are ``sqlite`` and ``postgres``.
``APLUS_TEST_DB=sqlite`` (or ``postgres``) keeps one of them; unset, both run.

While a test runs, `bot_database_url()` gives each new bot its database: on SQLite
``None`` (the bot's default, ``aplus.db`` in its data folder, migrated by the bot at its
first start); on PostgreSQL an empty database of its own, created from ``template0`` on
the server of ``APLUS_TEST_PG`` (127.0.0.1:5432, trust authentication), which the bot
migrates at its first start. Every database of a test is dropped ``WITH (FORCE)`` when
it ends.

On PostgreSQL, CREATE DATABASE takes one to two seconds on a loaded machine, nearly all
of it waiting on the server's disk: a thread makes a few ahead while tests run
(`_Spares`), and drops the used ones in the background. Each is used by one test only.
(Not the migrations: alembic's `context` and `op` are process-wide, so two migrations
must never run at once in two threads of one process.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2

BACKENDS = ("sqlite", "postgres")
PG_ADMIN_DSN = os.environ.get("APLUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# A test that never chose (a pure unit test, a benchmark) runs its bots on SQLite.
DEFAULT_BACKEND = "sqlite"
# Every test database starts with this: a leftover (a killed run) is recognisable.
NAME_PREFIX = "aplus_t_"

# How many empty databases the thread keeps ready (per pytest process).
SPARES = 2

_current = DEFAULT_BACKEND
# Databases of the running test, dropped when it ends; those made for the session
# (a session fixture's bot) are dropped when the session ends.
_test_databases: list[str] = []
_session_databases: list[str] = []


class BadSelection(ValueError):
    pass


def selected_backends() -> tuple[str, ...]:
    """The backends `APLUS_TEST_DB` asks for (comma-separated); unset or empty: both."""
    value = os.environ.get("APLUS_TEST_DB", "").strip()
    if not value:
        return BACKENDS
    chosen = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [name for name in chosen if name not in BACKENDS]
    if unknown or not chosen:
        raise BadSelection(f"APLUS_TEST_DB={value!r}: expected sqlite, postgres or both")
    return chosen


def current() -> str:
    """The backend of the running test."""
    return _current


def sqlalchemy_url(database: str) -> str:
    """The bot's URL (asyncpg driver) of a database on the test server."""
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + database


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def _admin(statement: str) -> None:
    # CREATE and DROP DATABASE cannot run in a transaction block: autocommit.
    with contextlib.closing(psycopg2.connect(PG_ADMIN_DSN)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)


def _make() -> str:
    name = NAME_PREFIX + secrets.token_hex(6)
    # template0: never a copy of whatever someone left in template1.
    _admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return name


def _drop(name: str) -> None:
    # FORCE: a bot that failed may have left a connection open.
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Spares:
    """Databases made ahead, and used ones dropped, by one thread while the tests run."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: list[str] = []
        self._to_drop: list[str] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self._error: BaseException | None = None

    def take(self) -> str:
        with self._cond:
            self._raise_error()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="spare-dbs", daemon=True)
                self._thread.start()
            name = self._ready.pop(0) if self._ready else None
            self._cond.notify()
        # None ready (the first one, or the tests outrun the thread): made here.
        return name or _make()

    def drop_later(self, name: str) -> None:
        with self._cond:
            self._to_drop.append(name)
            self._cond.notify()

    def close(self) -> None:
        """Stops the thread; drops the spares and whatever is still to drop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        leftovers = self._to_drop + self._ready
        self._to_drop, self._ready = [], []
        for name in leftovers:
            _drop(name)
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("the spare-database thread failed") from error

    def _next_job(self) -> str | None:
        """A database to drop, "" to make one, None to stop."""
        with self._cond:
            while True:
                if self._closing or self._error is not None:
                    return None
                if self._to_drop:
                    return self._to_drop.pop(0)
                if len(self._ready) < SPARES:
                    return ""
                self._cond.wait()

    def _run(self) -> None:
        while (to_drop := self._next_job()) is not None:
            try:
                if to_drop:
                    _drop(to_drop)
                else:
                    made = _make()
                    with self._cond:
                        self._ready.append(made)
            except BaseException as exc:  # kept for the tests' thread to raise
                with self._cond:
                    self._error = exc
                    if to_drop:
                        self._to_drop.append(to_drop)


_spares = _Spares()


def create_database(*, for_session: bool = False) -> str:
    """A fresh, empty database from ``template0``; its SQLAlchemy URL.

    Dropped when the running test ends, or with `for_session` when the session ends.
    """
    name = _spares.take()
    (_session_databases if for_session else _test_databases).append(name)
    return sqlalchemy_url(name)


def drop_database(name: str) -> None:
    """Dropped now (the test asked for it)."""
    for names in (_test_databases, _session_databases):
        if name in names:
            names.remove(name)
    _drop(name)


def bot_database_url() -> str | None:
    """The database of a new bot in the running test: None on SQLite (the bot's default)."""
    return create_database() if _current == "postgres" else None


def fresh_url(directory: Path) -> str:
    """A fresh database of the running test's backend, for a test that opens stores
    itself: a new SQLite file in `directory`, or a new PostgreSQL database."""
    if _current == "postgres":
        return create_database()
    return f"sqlite+aiosqlite:///{directory / f'aplus-{secrets.token_hex(4)}.db'}"


@contextlib.contextmanager
def backend_for_test(backend: str) -> Iterator[str]:
    """The running test's backend; its PostgreSQL databases are dropped at the end."""
    global _current
    assert backend in BACKENDS, backend
    _current = backend
    try:
        yield backend
    finally:
        _current = DEFAULT_BACKEND
        while _test_databases:
            _spares.drop_later(_test_databases.pop())


def close() -> None:
    """End of the session: the session's databases and the spares are dropped."""
    while _session_databases:
        _spares.drop_later(_session_databases.pop())
    _spares.close()
