"""The daily loop's part of `Tx`: companion rooms and the « procédure standard » flag
(tables of `loop_models`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update

from bot.store.loop_models import CompanionRoomRow, ProcedureStandardRow
from bot.store.tx_base import TxBase


class LoopTx(TxBase):
    # ------------------------------------------------------------ companion rooms
    async def request_companion(self, demande_id: int, *, by: str, now: datetime) -> bool:
        """Ask for the demande's companion room; False if it was asked for already."""
        if await self._s.get(CompanionRoomRow, demande_id) is not None:
            return False
        self._s.add(CompanionRoomRow(demande_id=demande_id, requested_by=by, requested_at=now))
        await self._s.flush()
        return True

    async def companion_room(self, demande_id: int) -> str | None:
        row = await self._s.get(CompanionRoomRow, demande_id)
        return row.room_id if row else None

    async def companion_requested(self, demande_id: int) -> bool:
        return await self._s.get(CompanionRoomRow, demande_id) is not None

    async def set_companion_room(self, demande_id: int, room_id: str) -> None:
        await self._s.execute(
            update(CompanionRoomRow)
            .where(CompanionRoomRow.demande_id == demande_id)
            .values(room_id=room_id)
        )

    async def companions(self) -> list[tuple[int, str | None]]:
        """(demande ID, room ID or None while not created) of every companion room."""
        rows = await self._s.scalars(select(CompanionRoomRow).order_by(CompanionRoomRow.demande_id))
        return [(r.demande_id, r.room_id) for r in rows]

    async def demande_of_companion(self, room_id: str) -> int | None:
        return await self._s.scalar(
            select(CompanionRoomRow.demande_id).where(CompanionRoomRow.room_id == room_id)
        )

    # ------------------------------------------------------------ procédure standard
    async def set_procedure_standard(
        self, demande_id: int, flagged: bool, *, by: str, now: datetime
    ) -> bool:
        """Set or clear the flag; True if it changed."""
        row = await self._s.get(ProcedureStandardRow, demande_id)
        if flagged and row is None:
            self._s.add(ProcedureStandardRow(demande_id=demande_id, flagged_by=by, flagged_at=now))
        elif not flagged and row is not None:
            await self._s.execute(
                delete(ProcedureStandardRow).where(ProcedureStandardRow.demande_id == demande_id)
            )
        else:
            return False
        await self._s.flush()
        return True

    async def procedure_standard_ids(self) -> set[int]:
        return set(await self._s.scalars(select(ProcedureStandardRow.demande_id)))
