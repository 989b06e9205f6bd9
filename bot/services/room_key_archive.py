"""The `KeyArchive` of the room-key sharer, in the database (keys sealed at rest).

Each write is its own short transaction: the keys are recorded before the message
they open is sent, so a crash can leave a key with no message, never the reverse.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from bot.services.clock import Clock
from bot.store.crypto_tx import ArchivedRoomKey
from bot.store.db import Store


class StoredKeyArchive:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def archive(
        self,
        *,
        room_id: str,
        session_id: str,
        first_index: int,
        session_key: str,
        users: Collection[str],
    ) -> None:
        async with self.store.transaction() as tx:
            await tx.archive_room_key(
                room_id=room_id,
                session_id=session_id,
                first_index=first_index,
                session_key=session_key,
                users=users,
                now=self.clock.now(),
            )

    async def delivered(self, session_id: str, devices: Collection[tuple[str, str]]) -> None:
        async with self.store.transaction() as tx:
            await tx.record_key_deliveries(session_id, devices, now=self.clock.now())

    async def keys_for(self, user_id: str) -> Sequence[ArchivedRoomKey]:
        async with self.store.transaction() as tx:
            return await tx.room_keys_for(user_id)

    async def deliveries(self, user_id: str) -> set[tuple[str, str]]:
        async with self.store.transaction() as tx:
            return await tx.key_deliveries(user_id)
