"""The ledger of a demande room, read from the committed database (the outbox's view)."""

from __future__ import annotations

from bot.services.companion import allowed_in
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
                # A companion room: the demande's instructeurs only.
                companion_of = await tx.demande_of_companion(room_id)
                demande = await tx.get_demande(companion_of) if companion_of else None
                if demande is None:
                    return None
                return await allowed_in(tx, demande) | {self.bot_user_id}
            participants = await tx.participants(demande.id)
        return {p.matrix_id for p in participants if p.matrix_id} | {self.bot_user_id}
