"""The ledger of a demande room, read from the committed database (the outbox's view)."""

from __future__ import annotations

from bot.store.db import Store


class StoreLedger:
    """Who may receive the room key of a demande room's next message: its active
    participants with a Matrix account, and the bot."""

    def __init__(self, store: Store, bot_user_id: str) -> None:
        self.store = store
        self.bot_user_id = bot_user_id

    async def authorised(self, room_id: str) -> set[str] | None:
        async with self.store.transaction() as tx:
            demande = await tx.get_demande_by_room(room_id)
            if demande is None:
                return None
            participants = await tx.participants(demande.id)
        return {p.matrix_id for p in participants if p.matrix_id} | {self.bot_user_id}
