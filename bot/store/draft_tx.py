"""The draft part of `Tx`: the demande in preparation, field by field, and its files
(tables of `draft_models`). Values and files are sealed with the field cipher."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update

from bot.domain.form import DraftFields
from bot.store.draft_models import DraftFileRow, DraftInputRow
from bot.store.tx_base import TxBase


@dataclass(frozen=True, slots=True)
class DraftInput:
    id: int
    fields: DraftFields
    asking: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DraftFile:
    id: int
    filename: str
    mimetype: str
    size: int


def _fields_aad(input_id: int) -> bytes:
    return b"draft_inputs:fields:%d" % input_id


def _file_aad(file_id: int, part: bytes) -> bytes:
    return b"draft_files:" + part + b":%d" % file_id


class DraftTx(TxBase):
    async def draft_input(self, *, aidant_agent_id: int, dm_room_id: str) -> DraftInput | None:
        row = await self._input_row(aidant_agent_id, dm_room_id)
        if row is None:
            return None
        fields = DraftFields.from_json(
            self._cipher.decrypt_json(row.fields_enc, _fields_aad(row.id))
        )
        return DraftInput(row.id, fields, row.asking, row.updated_at)

    async def save_draft_input(
        self,
        *,
        aidant_agent_id: int,
        dm_room_id: str,
        fields: DraftFields,
        asking: str | None,
        now: datetime,
    ) -> DraftInput:
        row = await self._input_row(aidant_agent_id, dm_room_id)
        if row is None:
            row = DraftInputRow(
                aidant_agent_id=aidant_agent_id,
                dm_room_id=dm_room_id,
                fields_enc=b"",
                created_at=now,
                updated_at=now,
            )
            self._s.add(row)
            await self._s.flush()  # the AAD needs the row's id
        row.fields_enc = self._cipher.encrypt_json(fields.to_json(), _fields_aad(row.id))
        row.asking = asking
        row.updated_at = now
        await self._s.flush()
        return DraftInput(row.id, fields, asking, now)

    async def drop_draft_input(self, *, aidant_agent_id: int, dm_room_id: str) -> int:
        """Forget the demande in preparation and its files; how many files went with it."""
        row = await self._input_row(aidant_agent_id, dm_room_id)
        if row is None:
            return 0
        gone = await self._s.execute(
            delete(DraftFileRow).where(DraftFileRow.input_id == row.id).returning(DraftFileRow.id)
        )
        count = len(gone.all())
        await self._s.delete(row)
        await self._s.flush()
        return count

    async def add_draft_file(
        self, input_id: int, *, filename: str, mimetype: str, data: bytes, now: datetime
    ) -> DraftFile:
        row = DraftFileRow(input_id=input_id, meta_enc=b"", data_enc=b"", created_at=now)
        self._s.add(row)
        await self._s.flush()
        meta = {"filename": filename, "mimetype": mimetype, "size": len(data)}
        row.meta_enc = self._cipher.encrypt_json(meta, _file_aad(row.id, b"meta"))
        row.data_enc = self._cipher.encrypt(data, _file_aad(row.id, b"data"))
        await self._s.flush()
        return DraftFile(row.id, filename, mimetype, len(data))

    async def draft_files(self, input_id: int) -> list[DraftFile]:
        rows = await self._s.scalars(
            select(DraftFileRow).where(DraftFileRow.input_id == input_id).order_by(DraftFileRow.id)
        )
        return [self._file(row) for row in rows]

    async def hand_draft_files_to(self, input_id: int, demande_id: int) -> int:
        """At `!confirmer`: the draft's files now belong to the demande (posted later)."""
        moved = await self._s.execute(
            update(DraftFileRow)
            .where(DraftFileRow.input_id == input_id)
            .values(input_id=None, demande_id=demande_id)
            .returning(DraftFileRow.id)
        )
        return len(moved.all())

    async def files_to_post(self, demande_id: int) -> list[tuple[DraftFile, bytes]]:
        rows = await self._s.scalars(
            select(DraftFileRow)
            .where(DraftFileRow.demande_id == demande_id)
            .order_by(DraftFileRow.id)
        )
        return [
            (self._file(row), self._cipher.decrypt(row.data_enc, _file_aad(row.id, b"data")))
            for row in rows
        ]

    async def demandes_with_files_to_post(self) -> list[int]:
        found = await self._s.scalars(
            select(DraftFileRow.demande_id).where(DraftFileRow.demande_id.is_not(None)).distinct()
        )
        return [int(x) for x in found if x is not None]

    async def draft_file_posted(self, file_id: int) -> None:
        await self._s.execute(delete(DraftFileRow).where(DraftFileRow.id == file_id))

    async def wipe_stale_draft_inputs(self, before: datetime) -> int:
        """Drafts untouched since `before`: forgotten with their files."""
        stale = list(
            await self._s.scalars(select(DraftInputRow.id).where(DraftInputRow.updated_at < before))
        )
        if not stale:
            return 0
        await self._s.execute(delete(DraftFileRow).where(DraftFileRow.input_id.in_(stale)))
        await self._s.execute(delete(DraftInputRow).where(DraftInputRow.id.in_(stale)))
        return len(stale)

    def _file(self, row: DraftFileRow) -> DraftFile:
        meta = self._cipher.decrypt_json(row.meta_enc, _file_aad(row.id, b"meta"))
        return DraftFile(row.id, str(meta["filename"]), str(meta["mimetype"]), int(meta["size"]))

    async def _input_row(self, aidant_agent_id: int, dm_room_id: str) -> DraftInputRow | None:
        return await self._s.scalar(
            select(DraftInputRow).where(
                DraftInputRow.aidant_agent_id == aidant_agent_id,
                DraftInputRow.dm_room_id == dm_room_id,
            )
        )
