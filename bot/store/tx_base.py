"""What every part of `Tx` shares: the session, the cipher, upserts, commit hooks.

`Tx` is assembled from one mixin per feature (directory and demandes, email, admin,
encryption, work queues); each inherits this base, so that none of them has to
pretend another provides what it uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.store.crypto import FieldCipher


class TxBase:
    def __init__(self, session: AsyncSession, cipher: FieldCipher, dialect: str) -> None:
        self._s = session
        self._cipher = cipher
        self._dialect = dialect

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
        """
        event.listen(self._s.sync_session, "after_commit", lambda _s: callback(), once=True)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction: an exception inside rolls back only what was done inside.

        A command runs in one, so that a handler that fails half-way leaves nothing of
        its work, while the refusal and its audit entry are still committed around it.
        """
        async with self._s.begin_nested():
            yield
