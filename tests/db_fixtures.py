"""Database fixtures for any test that needs a real store.

Use from a conftest with ``from tests.db_fixtures import *``. Everything is
function-scoped: an async engine must not outlive the event loop of its test.

- ``store``: an opened `Store`, run once on a fresh SQLite file and once on a
  fresh PostgreSQL database (ids ``sqlite`` / ``postgres``).
- ``sqlite_url`` / ``postgres_url``: the URL of a fresh, empty database.
- ``field_cipher``: a `FieldCipher` with a random key.
- ``fresh_postgres_database()``: the context manager behind ``postgres_url``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from bot.store.crypto import FieldCipher, generate_key
from bot.store.db import Store

__all__ = [
    "PG_ADMIN_DSN",
    "field_cipher",
    "fresh_postgres_database",
    "postgres_url",
    "sqlite_url",
    "store",
    "store_url",
]

PG_ADMIN_DSN = os.environ.get("APLUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _sqlalchemy_url(dsn: str, database: str) -> str:
    base = dsn.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + database


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """Creates ``aplus_t_<random>``, yields its SQLAlchemy URL, drops it afterwards."""
    name = "aplus_t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _sqlalchemy_url(PG_ADMIN_DSN, name)
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            # FORCE: a test that failed may have left a connection open.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


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


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """URL of a fresh empty database, once per backend."""
    if request.param == "sqlite":
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
