"""Which rooms are demande rooms: asked for every event, answered from memory.

Loaded from the database at start, added to by the opening as soon as a room is
recorded. The answer is almost always "no" for direct chats, so no query is needed.
"""

from __future__ import annotations

from bot.store.db import Store


class DemandeRoomIndex:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._rooms: set[str] = set()

    async def load(self) -> None:
        async with self.store.transaction() as tx:
            self._rooms = set(await tx.known_room_ids())

    def add(self, room_id: str) -> None:
        self._rooms.add(room_id)

    def __contains__(self, room_id: object) -> bool:
        return room_id in self._rooms
