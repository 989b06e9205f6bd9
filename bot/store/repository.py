"""`Tx`: everything the bot reads or writes, inside one database transaction.

Every method works on both SQLite and PostgreSQL. Idempotent writes use
``INSERT … ON CONFLICT`` so a duplicate never aborts the surrounding PostgreSQL
transaction, and counters use ``… RETURNING`` so two processes never read the
same value. Personal data is sealed with the `FieldCipher`, bound to its row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, or_, select, update

import bot.store.codec as codec
from bot.domain.model import (
    Agent,
    Demande,
    DemandeForm,
    DirectoryConflict,
    Group,
    Participant,
    Role,
    Status,
    StatusTimes,
    Usefulness,
)
from bot.store.admin_tx import AdminTx
from bot.store.crypto_tx import CryptoTx
from bot.store.draft_tx import DraftTx
from bot.store.email_tx import EmailTx
from bot.store.loop_tx import LoopTx
from bot.store.models import (
    CREATION_STEPS,
    DRAFT_STATES,
    PARTICIPANT_KINDS,
    AgentRow,
    AuditRow,
    BotSecretRow,
    BotStateRow,
    DemandeGroupRow,
    DemandeRow,
    DraftRow,
    GroupRow,
    OutboxMessageRow,
    ParticipantRow,
    ProcessedEventRow,
    ReferenceCounterRow,
    RoomOffenceRow,
    utcnow,
)
from bot.store.onboarding_tx import OnboardingTx
from bot.store.records import AuditEntry, Draft, OutgoingMessage
from bot.store.work_tx import WorkTx


class NotFound(LookupError):
    """An update named a row that does not exist: a bug in the caller, not a no-op."""


def _join(values: Iterable[str], what: str, *, sort: bool) -> str:
    items = list(values)
    for v in items:
        if not v or "," in v:
            raise ValueError(f"{what} invalide : {v!r}")
    return ",".join(sorted(items) if sort else items)


def _split(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def _norm_email(email: str | None) -> str | None:
    # Lower-cased once, at write time, so uniqueness and lookups agree.
    if email is None:
        return None
    email = email.strip().lower()
    return email or None


def _to_group(row: GroupRow) -> Group:
    return Group(
        id=row.id,
        name=row.name,
        organisation_id=row.organisation_id,
        departements=frozenset(_split(row.departements)),
        bal=row.bal,
    )


def _to_agent(row: AgentRow) -> Agent:
    return Agent(
        id=row.id,
        first_name=row.first_name,
        last_name=row.last_name,
        email=row.email,
        matrix_id=row.matrix_id,
        group_id=row.group_id,
        roles=frozenset(Role(r) for r in _split(row.roles)),
        active=row.active,
    )


def _to_record(row: DemandeRow) -> Demande:
    return Demande(
        id=row.id,
        reference=row.reference,
        territoire=row.territoire,
        organisations=tuple(_split(row.organisations)),
        categorie=row.categorie,
        status=Status(row.status),
        times=StatusTimes(
            created_at=row.created_at,
            first_answer_at=row.first_answer_at,
            last_answer_at=row.last_answer_at,
            treated_at=row.treated_at,
            closed_at=row.closed_at,
            reopened_at=row.reopened_at,
        ),
        usefulness=Usefulness(row.usefulness) if row.usefulness is not None else None,
        aidant_agent_id=row.aidant_agent_id,
        room_id=row.room_id,
        creation_step=row.creation_step,
        dossier_event_id=row.dossier_event_id,
        group_ids=tuple(sorted(g.group_id for g in row.groups)),
        draft_id=row.draft_id,
    )


def _to_participant(row: ParticipantRow) -> Participant:
    return Participant(
        agent_id=row.agent_id,
        matrix_id=row.matrix_id,
        email=row.email,
        group_id=row.group_id,
        kind=row.kind,
        active=row.removed_at is None,
    )


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} inconnu : {value!r} (attendu : {', '.join(allowed)})")


# AADs: table, column and row identity, so a blob only decrypts where it was written.
def _draft_aad(draft_id: int) -> bytes:
    return b"drafts:form:%d" % draft_id


def _objet_aad(reference: str) -> bytes:
    return b"demandes:objet:" + reference.encode("utf-8")


def _dossier_aad(reference: str) -> bytes:
    return b"demandes:dossier:" + reference.encode("utf-8")


def _outbox_aad(txn_id: str) -> bytes:
    return b"outbox_messages:content:" + txn_id.encode("utf-8")


def _secret_aad(key: str) -> bytes:
    return b"bot_secrets:value:" + key.encode("utf-8")


class Tx(EmailTx, AdminTx, CryptoTx, WorkTx, DraftTx, LoopTx, OnboardingTx):
    """One transaction. Obtain it from `Store.transaction()`; do not keep it after."""

    # ------------------------------------------------------------------ directory

    async def get_agent(self, agent_id: int) -> Agent | None:
        row = await self._s.get(AgentRow, agent_id)
        return _to_agent(row) if row else None

    async def get_agent_by_matrix_id(self, matrix_id: str) -> Agent | None:
        row = await self._s.scalar(select(AgentRow).where(AgentRow.matrix_id == matrix_id))
        return _to_agent(row) if row else None

    async def get_agent_by_email(self, email: str) -> Agent | None:
        row = await self._s.scalar(select(AgentRow).where(AgentRow.email == _norm_email(email)))
        return _to_agent(row) if row else None

    async def list_agents(self, *, active_only: bool = True) -> list[Agent]:
        stmt = select(AgentRow).order_by(AgentRow.id)
        if active_only:
            stmt = stmt.where(AgentRow.active.is_(True))
        return [_to_agent(r) for r in await self._s.scalars(stmt)]

    async def agents_of_group(self, group_id: int, *, active_only: bool = True) -> list[Agent]:
        stmt = select(AgentRow).where(AgentRow.group_id == group_id).order_by(AgentRow.id)
        if active_only:
            stmt = stmt.where(AgentRow.active.is_(True))
        return [_to_agent(r) for r in await self._s.scalars(stmt)]

    async def get_group(self, group_id: int) -> Group | None:
        row = await self._s.get(GroupRow, group_id)
        return _to_group(row) if row else None

    async def get_group_by_name(self, name: str) -> Group | None:
        row = await self._s.scalar(select(GroupRow).where(GroupRow.name == name))
        return _to_group(row) if row else None

    async def list_groups(self) -> list[Group]:
        rows = await self._s.scalars(select(GroupRow).order_by(GroupRow.id))
        return [_to_group(r) for r in rows]

    async def upsert_group(
        self, *, name: str, organisation_id: str, departements: frozenset[str], bal: str | None
    ) -> Group:
        values = {
            "organisation_id": organisation_id,
            "departements": _join(departements, "Département", sort=True),
            "bal": bal,
        }
        stmt = (
            self._insert(GroupRow)
            .values(name=name, created_at=utcnow(), **values)
            .on_conflict_do_update(index_elements=["name"], set_=values)
            .returning(GroupRow)
        )
        # populate_existing: a GroupRow already loaded in this session must see the update.
        row = (await self._s.scalars(stmt, execution_options={"populate_existing": True})).one()
        return _to_group(row)

    async def upsert_agent(
        self,
        *,
        first_name: str,
        last_name: str,
        email: str | None,
        matrix_id: str | None,
        group_id: int | None,
        roles: frozenset[Role],
        active: bool = True,
    ) -> tuple[Agent, bool]:
        """Matched by Matrix ID, then by email. Returns the agent and whether it was created."""
        email = _norm_email(email)
        if email is None and not matrix_id:
            raise ValueError(
                f"L'agent {first_name} {last_name} n'a ni adresse électronique "
                "ni identifiant Matrix."
            )
        by_mx = by_email = None
        if matrix_id:
            by_mx = await self._s.scalar(select(AgentRow).where(AgentRow.matrix_id == matrix_id))
        if email is not None:
            by_email = await self._s.scalar(select(AgentRow).where(AgentRow.email == email))
        if by_mx is not None and by_email is not None and by_mx.id != by_email.id:
            raise DirectoryConflict(
                f"{matrix_id} et {email} désignent deux agents différents "
                f"(n° {by_mx.id} et n° {by_email.id}) : corrigez l'annuaire."
            )
        row = by_mx or by_email
        fields = {
            "first_name": first_name,
            "last_name": last_name,
            "email": email,
            "matrix_id": matrix_id or None,
            "group_id": group_id,
            "roles": _join((r.value for r in roles), "Rôle", sort=True),
            "active": active,
            "updated_at": utcnow(),
        }
        created = row is None
        if row is None:
            row = AgentRow(**fields)
            self._s.add(row)
        else:
            for name, value in fields.items():
                setattr(row, name, value)
        await self._s.flush()
        return _to_agent(row), created

    async def set_agent_active(self, agent_id: int, active: bool) -> None:
        await self._update_one(
            AgentRow, AgentRow.id == agent_id, active=active, updated_at=utcnow()
        )

    # ------------------------------------------------------------------ drafts

    async def save_draft(
        self,
        *,
        aidant_agent_id: int,
        dm_room_id: str,
        form: DemandeForm,
        group_ids: Sequence[int],
        now: datetime,
    ) -> Draft:
        """A new pending draft; any earlier pending one of this aidant in this room is cancelled."""
        await self._s.execute(
            update(DraftRow)
            .where(
                DraftRow.aidant_agent_id == aidant_agent_id,
                DraftRow.dm_room_id == dm_room_id,
                DraftRow.state == "pending",
            )
            .values(state="cancelled", updated_at=now)
        )
        row = DraftRow(
            aidant_agent_id=aidant_agent_id,
            dm_room_id=dm_room_id,
            form_enc=b"",
            group_ids=list(group_ids),
            state="pending",
            created_at=now,
            updated_at=now,
        )
        self._s.add(row)
        await self._s.flush()  # the AAD needs the row's id
        row.form_enc = self._cipher.encrypt_json(codec.form_to_json(form), _draft_aad(row.id))
        await self._s.flush()
        return self._to_draft(row, form)

    async def pending_draft(self, *, aidant_agent_id: int, dm_room_id: str) -> Draft | None:
        return await self._one_draft(aidant_agent_id, dm_room_id, pending_only=True)

    async def last_draft(self, *, aidant_agent_id: int, dm_room_id: str) -> Draft | None:
        return await self._one_draft(aidant_agent_id, dm_room_id, pending_only=False)

    async def set_draft_state(
        self, draft_id: int, state: str, *, demande_id: int | None = None, now: datetime
    ) -> None:
        _check(state, DRAFT_STATES, "État de brouillon")
        values: dict[str, Any] = {"state": state, "updated_at": now}
        if demande_id is not None:
            values["demande_id"] = demande_id
        await self._update_one(DraftRow, DraftRow.id == draft_id, **values)

    async def _one_draft(
        self, aidant_agent_id: int, dm_room_id: str, *, pending_only: bool
    ) -> Draft | None:
        stmt = select(DraftRow).where(
            DraftRow.aidant_agent_id == aidant_agent_id, DraftRow.dm_room_id == dm_room_id
        )
        if pending_only:
            stmt = stmt.where(DraftRow.state == "pending")
        row = await self._s.scalar(stmt.order_by(DraftRow.id.desc()).limit(1))
        if row is None:
            return None
        form = codec.form_from_json(self._cipher.decrypt_json(row.form_enc, _draft_aad(row.id)))
        return self._to_draft(row, form)

    @staticmethod
    def _to_draft(row: DraftRow, form: DemandeForm) -> Draft:
        return Draft(
            id=row.id,
            aidant_agent_id=row.aidant_agent_id,
            dm_room_id=row.dm_room_id,
            form=form,
            group_ids=tuple(row.group_ids),
            state=row.state,
            demande_id=row.demande_id,
            created_at=row.created_at,
        )

    # ------------------------------------------------------------------ demandes

    async def next_reference(self, year: int) -> str:
        """Allocates the next reference of the year. A single upsert, so concurrent
        transactions queue on the counter row and never get the same number; a
        rolled-back allocation was never visible, so nothing handed out is reused."""
        stmt = (
            self._insert(ReferenceCounterRow)
            .values(year=year, last=1)
            .on_conflict_do_update(
                index_elements=["year"], set_={"last": ReferenceCounterRow.last + 1}
            )
            .returning(ReferenceCounterRow.last)
        )
        number = (await self._s.execute(stmt)).scalar_one()
        return f"A-{year}-{number:06d}"

    async def create_demande(
        self,
        *,
        reference: str,
        form: DemandeForm,
        aidant_agent_id: int,
        group_ids: Sequence[int],
        draft_id: int | None,
        now: datetime,
    ) -> Demande:
        row = DemandeRow(
            reference=reference,
            territoire=form.territoire,
            organisations=_join(form.organisations, "Organisation", sort=False),
            categorie=form.categorie,
            objet_enc=self._cipher.encrypt(form.objet.encode("utf-8"), _objet_aad(reference)),
            dossier_enc=self._cipher.encrypt_json(
                codec.dossier_to_json(form), _dossier_aad(reference)
            ),
            aidant_agent_id=aidant_agent_id,
            status=Status.NOUVELLE.value,
            created_at=now,
            creation_step="pending",
            draft_id=draft_id,
            groups=[DemandeGroupRow(group_id=g) for g in dict.fromkeys(group_ids)],
        )
        self._s.add(row)
        await self._s.flush()
        return _to_record(row)

    async def get_demande(self, demande_id: int) -> Demande | None:
        row = await self._s.get(DemandeRow, demande_id)
        return _to_record(row) if row else None

    async def get_demande_by_reference(self, reference: str) -> Demande | None:
        row = await self._s.scalar(select(DemandeRow).where(DemandeRow.reference == reference))
        return _to_record(row) if row else None

    async def get_demande_by_room(self, room_id: str) -> Demande | None:
        row = await self._s.scalar(select(DemandeRow).where(DemandeRow.room_id == room_id))
        return _to_record(row) if row else None

    async def demandes_in_creation(self) -> list[Demande]:
        stmt = select(DemandeRow).where(DemandeRow.creation_step != "ready")
        return [_to_record(r) for r in await self._s.scalars(stmt.order_by(DemandeRow.id))]

    async def list_demandes(self, *, status: Status | None = None) -> list[Demande]:
        stmt = select(DemandeRow).order_by(DemandeRow.id)
        if status is not None:
            stmt = stmt.where(DemandeRow.status == status.value)
        return [_to_record(r) for r in await self._s.scalars(stmt)]

    async def known_room_ids(self) -> set[str]:
        rows = await self._s.scalars(
            select(DemandeRow.room_id).where(DemandeRow.room_id.is_not(None))
        )
        return {r for r in rows if r is not None}

    async def set_creation_step(
        self,
        demande_id: int,
        step: str,
        *,
        room_id: str | None = None,
        dossier_event_id: str | None = None,
    ) -> None:
        """`room_id` / `dossier_event_id` are only written when given (None keeps them)."""
        _check(step, CREATION_STEPS, "Étape de création")
        values: dict[str, Any] = {"creation_step": step}
        if room_id is not None:
            values["room_id"] = room_id
        if dossier_event_id is not None:
            values["dossier_event_id"] = dossier_event_id
        await self._update_one(DemandeRow, DemandeRow.id == demande_id, **values)

    async def update_status(
        self,
        demande_id: int,
        status: Status,
        times: StatusTimes,
        *,
        usefulness: Usefulness | None = None,
    ) -> None:
        """Writes every time but `created_at` (fixed at creation); `usefulness=None` keeps it."""
        values: dict[str, Any] = {
            "status": status.value,
            "first_answer_at": times.first_answer_at,
            "last_answer_at": times.last_answer_at,
            "treated_at": times.treated_at,
            "closed_at": times.closed_at,
            "reopened_at": times.reopened_at,
        }
        if usefulness is not None:
            values["usefulness"] = usefulness.value
        await self._update_one(DemandeRow, DemandeRow.id == demande_id, **values)

    async def update_form(self, demande_id: int, form: DemandeForm) -> None:
        """The amended dossier (`!completer`); the territory and organisations stay."""
        row = await self._s.get(DemandeRow, demande_id)
        if row is None:
            raise NotFound(f"demande {demande_id}")
        row.objet_enc = self._cipher.encrypt(form.objet.encode("utf-8"), _objet_aad(row.reference))
        row.dossier_enc = self._cipher.encrypt_json(
            codec.dossier_to_json(form), _dossier_aad(row.reference)
        )
        await self._s.flush()

    async def load_form(self, demande_id: int) -> DemandeForm:
        row = await self._s.get(DemandeRow, demande_id)
        if row is None:
            raise NotFound(f"demande {demande_id}")
        objet = self._cipher.decrypt(row.objet_enc, _objet_aad(row.reference)).decode("utf-8")
        dossier = self._cipher.decrypt_json(row.dossier_enc, _dossier_aad(row.reference))
        return DemandeForm(
            territoire=row.territoire,
            organisations=tuple(_split(row.organisations)),
            categorie=row.categorie,
            objet=objet,
            usager=codec.usager_from_json(dossier["usager"]),
            description=dossier["description"],
            mandat=codec.mandat_from_json(dossier["mandat"]),
        )

    # ------------------------------------------------------------------ participants

    async def add_participant(
        self, *, demande_id: int, agent: Agent, kind: str, added_by: str, now: datetime
    ) -> bool:
        """False if already active; a removed participant is re-activated (True)."""
        _check(kind, PARTICIPANT_KINDS, "Type de participant")
        row = await self._s.scalar(
            select(ParticipantRow).where(
                ParticipantRow.demande_id == demande_id, ParticipantRow.agent_id == agent.id
            )
        )
        if row is not None and row.removed_at is None:
            return False
        if row is None:
            row = ParticipantRow(demande_id=demande_id, agent_id=agent.id)
            self._s.add(row)
        row.matrix_id = agent.matrix_id
        row.email = agent.email
        row.group_id = agent.group_id
        row.kind = kind
        row.added_at = now
        row.added_by = added_by
        row.removed_at = None
        await self._s.flush()
        return True

    async def add_first_participants(
        self, *, demande_id: int, entries: Sequence[tuple[Agent, str, str]], now: datetime
    ) -> None:
        """The participants of a demande created in this transaction, which has none yet:
        (agent, kind, added by) each, in one INSERT; an agent listed twice keeps its first
        entry (what `add_participant` one by one would do)."""
        rows: dict[int, dict[str, Any]] = {}
        for agent, kind, added_by in entries:
            _check(kind, PARTICIPANT_KINDS, "Type de participant")
            rows.setdefault(
                agent.id,
                {
                    "demande_id": demande_id,
                    "agent_id": agent.id,
                    "matrix_id": agent.matrix_id,
                    "email": agent.email,
                    "group_id": agent.group_id,
                    "kind": kind,
                    "added_at": now,
                    "added_by": added_by,
                    "removed_at": None,
                },
            )
        if rows:
            # Core, one executemany: every row has the same columns (the ORM would group
            # the rows by which of them are None).
            table = cast(Table, ParticipantRow.__table__)
            await self._s.execute(insert(table), list(rows.values()))

    async def participants(self, demande_id: int, *, active_only: bool = True) -> list[Participant]:
        stmt = select(ParticipantRow).where(ParticipantRow.demande_id == demande_id)
        if active_only:
            stmt = stmt.where(ParticipantRow.removed_at.is_(None))
        rows = await self._s.scalars(stmt.order_by(ParticipantRow.id))
        return [_to_participant(r) for r in rows]

    async def remove_participant(self, *, demande_id: int, agent_id: int, now: datetime) -> bool:
        """True if the participant was active and is now removed."""
        stmt = (
            update(ParticipantRow)
            .where(
                ParticipantRow.demande_id == demande_id,
                ParticipantRow.agent_id == agent_id,
                ParticipantRow.removed_at.is_(None),
            )
            .values(removed_at=now)
            .returning(ParticipantRow.id, ParticipantRow.email)
        )
        removed = (await self._s.execute(stmt)).first()
        if removed is not None and removed.email:
            # Leaving the demande ends the agent's reply address for it, in this transaction.
            await self.revoke_reply_tokens(
                demande_id=demande_id, agent_email=removed.email, now=now
            )
        return removed is not None

    async def demandes_of_agent(self, agent_id: int) -> list[Demande]:
        """Demandes the agent opened, or takes part in (as an active participant)."""
        taking_part = select(ParticipantRow.demande_id).where(
            ParticipantRow.agent_id == agent_id, ParticipantRow.removed_at.is_(None)
        )
        stmt = (
            select(DemandeRow)
            .where(or_(DemandeRow.aidant_agent_id == agent_id, DemandeRow.id.in_(taking_part)))
            .order_by(DemandeRow.id)
        )
        return [_to_record(r) for r in await self._s.scalars(stmt)]

    # ------------------------------------------------------------------ idempotency

    async def mark_processed(self, event_id: str, room_id: str, now: datetime) -> bool:
        """True the first time this event is seen; False afterwards (never raises)."""
        stmt = (
            self._insert(ProcessedEventRow)
            .values(event_id=event_id, room_id=room_id, processed_at=now)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(ProcessedEventRow.event_id)
        )
        return (await self._s.execute(stmt)).first() is not None

    async def is_processed(self, event_id: str) -> bool:
        found = await self._s.scalar(
            select(ProcessedEventRow.event_id).where(ProcessedEventRow.event_id == event_id)
        )
        return found is not None

    # ------------------------------------------------------------------ outbox

    async def enqueue_message(
        self, *, txn_id: str, room_id: str, content: dict[str, Any], now: datetime
    ) -> bool:
        """False if this txn_id is already queued (or sent): enqueueing is idempotent."""
        stmt = (
            self._insert(OutboxMessageRow)
            .values(
                txn_id=txn_id,
                room_id=room_id,
                content_enc=self._cipher.encrypt_json(content, _outbox_aad(txn_id)),
                created_at=now,
                attempts=0,
            )
            .on_conflict_do_nothing(index_elements=["txn_id"])
            .returning(OutboxMessageRow.txn_id)
        )
        return (await self._s.execute(stmt)).first() is not None

    async def pending_messages(self, room_id: str | None = None) -> list[OutgoingMessage]:
        stmt = select(OutboxMessageRow).where(OutboxMessageRow.sent_at.is_(None))
        if room_id is not None:
            stmt = stmt.where(OutboxMessageRow.room_id == room_id)
        stmt = stmt.order_by(OutboxMessageRow.created_at, OutboxMessageRow.txn_id)
        return [
            OutgoingMessage(
                txn_id=r.txn_id,
                room_id=r.room_id,
                content=self._cipher.decrypt_json(r.content_enc, _outbox_aad(r.txn_id)),
                created_at=r.created_at,
                attempts=r.attempts,
            )
            for r in await self._s.scalars(stmt)
        ]

    async def rooms_with_pending_messages(self) -> list[str]:
        rows = await self._s.scalars(
            select(OutboxMessageRow.room_id)
            .where(OutboxMessageRow.sent_at.is_(None))
            .group_by(OutboxMessageRow.room_id)
            .order_by(OutboxMessageRow.room_id)
        )
        return list(rows)

    async def record_send_attempt(self, txn_id: str) -> int:
        """Counts a delivery attempt (for backoff and alerting); returns the new count."""
        stmt = (
            update(OutboxMessageRow)
            .where(OutboxMessageRow.txn_id == txn_id)
            .values(attempts=OutboxMessageRow.attempts + 1)
            .returning(OutboxMessageRow.attempts)
        )
        count = (await self._s.execute(stmt)).scalar_one_or_none()
        if count is None:
            raise NotFound(f"outbox message {txn_id}")
        return count

    async def mark_message_sent(self, txn_id: str, event_id: str, now: datetime) -> None:
        """The first recorded event ID wins: a retried send returns the same event anyway."""
        # One UPDATE in the usual case (the message is queued and not yet marked sent).
        marked = await self._s.scalar(
            update(OutboxMessageRow)
            .where(OutboxMessageRow.txn_id == txn_id, OutboxMessageRow.sent_at.is_(None))
            .values(sent_at=now, event_id=event_id)
            .returning(OutboxMessageRow.txn_id)
        )
        if marked is None and await self._s.get(OutboxMessageRow, txn_id) is None:
            raise NotFound(f"outbox message {txn_id}")

    async def message_event_id(self, txn_id: str) -> str | None:
        return await self._s.scalar(
            select(OutboxMessageRow.event_id).where(OutboxMessageRow.txn_id == txn_id)
        )

    # ------------------------------------------------------------------ room guard

    async def record_offence(self, room_id: str, user_id: str, now: datetime) -> int:
        stmt = (
            self._insert(RoomOffenceRow)
            .values(room_id=room_id, user_id=user_id, count=1, last_at=now)
            .on_conflict_do_update(
                index_elements=["room_id", "user_id"],
                set_={"count": RoomOffenceRow.count + 1, "last_at": now},
            )
            .returning(RoomOffenceRow.count)
        )
        count: int = (await self._s.execute(stmt)).scalar_one()
        return count

    async def offences(self, room_id: str) -> dict[str, int]:
        rows = await self._s.execute(
            select(RoomOffenceRow.user_id, RoomOffenceRow.count).where(
                RoomOffenceRow.room_id == room_id
            )
        )
        return {user_id: count for user_id, count in rows}

    # ------------------------------------------------------------------ audit (append-only)

    async def audit(
        self,
        action: str,
        *,
        actor: str,
        reference: str | None = None,
        details: Mapping[str, Any] | None = None,
        now: datetime,
    ) -> None:
        """Appends one entry. Never put message content or usager data in `details`."""
        self._s.add(
            AuditRow(
                at=now, actor=actor, action=action, reference=reference, details=dict(details or {})
            )
        )
        await self._s.flush()

    async def audit_entries(
        self, *, reference: str | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        stmt = select(AuditRow).order_by(AuditRow.id)
        if reference is not None:
            stmt = stmt.where(AuditRow.reference == reference)
        if action is not None:
            stmt = stmt.where(AuditRow.action == action)
        return [
            AuditEntry(
                id=r.id,
                at=r.at,
                actor=r.actor,
                action=r.action,
                reference=r.reference,
                details=dict(r.details),
            )
            for r in await self._s.scalars(stmt)
        ]

    # ------------------------------------------------------------------ bot state and secrets

    async def get_state(self, key: str) -> str | None:
        return await self._s.scalar(select(BotStateRow.value).where(BotStateRow.key == key))

    async def set_state(self, key: str, value: str) -> None:
        stmt = (
            self._insert(BotStateRow)
            .values(key=key, value=value)
            .on_conflict_do_update(index_elements=["key"], set_={"value": value})
        )
        await self._s.execute(stmt)

    async def get_secret(self, key: str) -> bytes | None:
        blob = await self._s.scalar(select(BotSecretRow.value_enc).where(BotSecretRow.key == key))
        return None if blob is None else self._cipher.decrypt(blob, _secret_aad(key))

    async def set_secret(self, key: str, value: bytes) -> None:
        blob = self._cipher.encrypt(value, _secret_aad(key))
        stmt = (
            self._insert(BotSecretRow)
            .values(key=key, value_enc=blob)
            .on_conflict_do_update(index_elements=["key"], set_={"value_enc": blob})
        )
        await self._s.execute(stmt)

    # ------------------------------------------------------------------ helpers

    async def _update_one(self, model: type[Any], where: Any, **values: Any) -> None:
        stmt = update(model).where(where).values(**values).returning(model.__table__.c[0])
        if (await self._s.execute(stmt)).first() is None:
            raise NotFound(f"{model.__tablename__}: {where}")
