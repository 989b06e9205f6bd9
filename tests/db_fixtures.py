"""Database fixtures for any test that needs a real store.

Use from a conftest with ``from tests.db_fixtures import *``. Everything is
function-scoped: an async engine must not outlive the event loop of its test.

The backend is the test's ``db_backend`` (tests/conftest.py, tests/support/databases.py):
a test using these fixtures runs once on SQLite and once on PostgreSQL (ids ``sqlite`` /
``postgres``), unless ``APLUS_TEST_DB`` keeps one.

- ``store``: an opened `Store` on a fresh database of the test's backend.
- ``store_url``: the URL of a fresh, empty database of the test's backend.
- ``sqlite_url`` / ``postgres_url``: a fresh database of that backend, for a test about
  that backend only (it then runs once, with that backend's id).
- ``field_cipher``: a `FieldCipher` with a random key.
- ``fresh_postgres_database()``: a fresh PostgreSQL database as an async context manager.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.store.crypto import FieldCipher, generate_key
from bot.store.db import Store
from tests.support import databases
from tests.support.databases import PG_ADMIN_DSN

__all__ = [
    "PG_ADMIN_DSN",
    "field_cipher",
    "fresh_postgres_database",
    "postgres_url",
    "sqlite_url",
    "store",
    "store_url",
]


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """Creates ``aplus_t_<random>`` from template0, yields its SQLAlchemy URL, drops it."""
    url = await asyncio.to_thread(databases.create_database)
    try:
        yield url
    finally:
        await asyncio.to_thread(databases.drop_database, databases.database_name(url))


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'aplus.db'}"


@pytest.fixture
def field_cipher() -> FieldCipher:
    return FieldCipher.from_secret(generate_key())


@pytest.fixture
async def store_url(db_backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """URL of a fresh empty database of the test's backend."""
    if db_backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'aplus.db'}"
        return
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture
async def store(store_url: str, field_cipher: FieldCipher) -> AsyncIterator[Store]:
    opened = await Store.open(store_url, field_cipher)
    try:
        yield opened
    finally:
        await opened.close()
