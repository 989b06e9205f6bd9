"""What every part of `Tx` shares: the session, the cipher, upserts, commit hooks.

`Tx` is assembled from one mixin per feature (directory and demandes, email, admin,
encryption, work queues); each inherits this base, so that none of them has to
pretend another provides what it uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.store.crypto import FieldCipher


class TxBase:
    def __init__(self, session: AsyncSession, cipher: FieldCipher, dialect: str) -> None:
        self._s = session
        self._cipher = cipher
        self._dialect = dialect
        self._on_commit: list[Callable[[], None]] = []

    @property
    def dialect(self) -> str:
        return self._dialect

    def _insert(self, model: type[Any]) -> Any:
        # Both dialects spell upserts the same way; only the construct differs.
        if self._dialect == "postgresql":
            return postgresql.insert(model)
        return sqlite.insert(model)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed (never if it rolls back).

        Workers are woken this way: woken earlier, they could look before the commit.
        Not SQLAlchemy's `after_commit` event: it also fires when a savepoint is
        released, before the real commit (on PostgreSQL a worker then finds nothing).
        """
        self._on_commit.append(callback)

    def committed(self) -> None:
        """The store calls this once the outermost transaction has committed."""
        callbacks, self._on_commit = self._on_commit, []
        for callback in callbacks:
            callback()

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction: an exception inside rolls back only what was done inside.

        A command runs in one, so that a handler that fails half-way leaves nothing of
        its work, while the refusal and its audit entry are still committed around it.
        What it asked to run after the commit goes with it.
        """
        registered = len(self._on_commit)
        try:
            async with self._s.begin_nested():
                yield
        except BaseException:
            del self._on_commit[registered:]
            raise
