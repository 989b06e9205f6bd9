"""The admin room's part of `Tx` (a mixin: `Tx` inherits it, nothing else does).

Directory edits by id, aggregates for statistics and metrics, and the two
deletion paths of the retention job:

- wiping a demande's personal data: the sealed columns are overwritten with an
  empty blob (the schema keeps them NOT NULL), so nothing can be decrypted
  again, not even with the data key;
- deleting audit entries past their lifetime: the audit table refuses DELETE
  (database triggers) unless the same transaction first writes a permit row in
  `bot_state` naming the cutoff; the permit is removed before the commit, so
  it is never visible outside the purge, and every purge is itself audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from bot.domain.model import Agent, DirectoryConflict, Role, Status
from bot.store.models import (
    AgentRow,
    AuditRow,
    Base,
    BotStateRow,
    DemandeGroupRow,
    DemandeRow,
    DraftRow,
    GroupRow,
    OutboxMessageRow,
    utcnow,
)
from bot.store.tx_base import TxBase

# Read by the audit triggers (migration 0004): DELETE passes only for rows older than it.
AUDIT_PURGE_PERMIT_KEY = "audit.purge_before"
WIPED = b""
OPEN_STATUSES = (Status.NOUVELLE.value, Status.EN_COURS.value, Status.TRAITEE.value)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    oldest_pending_at: datetime | None
    refused: int


@dataclass(frozen=True, slots=True)
class WipeReport:
    drafts: int
    outbox_messages: int
    emails: int


def permit_value(moment: datetime) -> str:
    """The cutoff as the triggers compare it: UTC, the way each backend stores `at`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class AdminTx(TxBase):
    # ------------------------------------------------------------------ directory by id

    async def update_agent(self, agent: Agent) -> Agent:
        """Write every field of `agent` (found by id); refuses a taken email or Matrix ID."""
        row = await self._s.get(AgentRow, agent.id)
        if row is None:
            raise LookupError(f"agent {agent.id}")
        email = agent.email.strip().lower() if agent.email else None
        for column, value, label in (
            (AgentRow.email, email, "l'adresse"),
            (AgentRow.matrix_id, agent.matrix_id, "l'identifiant Matrix"),
        ):
            if value is None:
                continue
            other = await self._s.scalar(
                select(AgentRow.id).where(column == value, AgentRow.id != agent.id)
            )
            if other is not None:
                raise DirectoryConflict(f"{label} {value} est déjà celle de l'agent n° {other}.")
        row.first_name = agent.first_name
        row.last_name = agent.last_name
        row.email = email
        row.matrix_id = agent.matrix_id
        row.group_id = agent.group_id
        row.roles = ",".join(sorted(r.value for r in agent.roles))
        row.active = agent.active
        row.updated_at = utcnow()
        await self._s.flush()
        return agent

    async def update_group(
        self,
        group_id: int,
        *,
        name: str,
        organisation_id: str,
        departements: frozenset[str],
        bal: str | None,
    ) -> None:
        other = await self._s.scalar(
            select(GroupRow.id).where(GroupRow.name == name, GroupRow.id != group_id)
        )
        if other is not None:
            raise DirectoryConflict(f"Un autre groupe s'appelle déjà « {name} ».")
        row = await self._s.get(GroupRow, group_id, populate_existing=True)
        if row is None:
            raise LookupError(f"group {group_id}")
        row.name = name
        row.organisation_id = organisation_id
        row.departements = ",".join(sorted(departements))
        row.bal = bal
        await self._s.flush()

    async def agent_counts_by_group(self) -> dict[int, int]:
        rows = await self._s.execute(
            select(AgentRow.group_id, func.count())
            .where(AgentRow.active.is_(True), AgentRow.group_id.is_not(None))
            .group_by(AgentRow.group_id)
        )
        return {int(g): int(n) for g, n in rows if g is not None}

    async def operators(self) -> list[str]:
        """Matrix IDs of the active operators: the only people allowed in the admin room."""
        rows = await self._s.scalars(
            select(AgentRow).where(AgentRow.active.is_(True), AgentRow.matrix_id.is_not(None))
        )
        return sorted(
            r.matrix_id for r in rows if r.matrix_id and Role.OPERATEUR.value in r.roles.split(",")
        )

    async def open_demande_ids_of_group(self, group_id: int) -> list[int]:
        """Open demandes (room ready) that were sent to the group."""
        rows = await self._s.scalars(
            select(DemandeRow.id)
            .join(DemandeGroupRow, DemandeGroupRow.demande_id == DemandeRow.id)
            .where(
                DemandeGroupRow.group_id == group_id,
                DemandeRow.status.in_(OPEN_STATUSES),
                DemandeRow.creation_step == "ready",
            )
            .order_by(DemandeRow.id)
        )
        return list(rows)

    # ------------------------------------------------------------------ aggregates

    async def count_demandes_by_status(self) -> dict[Status, int]:
        rows = await self._s.execute(
            select(DemandeRow.status, func.count()).group_by(DemandeRow.status)
        )
        counts = {s: 0 for s in Status}
        for status, n in rows:
            counts[Status(status)] = int(n)
        return counts

    async def outbox_stats(self) -> OutboxStats:
        pending, oldest = (
            await self._s.execute(
                select(func.count(), func.min(OutboxMessageRow.created_at)).where(
                    OutboxMessageRow.sent_at.is_(None)
                )
            )
        ).one()
        refused = await self._s.scalar(
            select(func.count()).where(OutboxMessageRow.event_id.like("!refused%"))
        )
        if isinstance(oldest, str):  # SQLite returns min() of a timestamp as text
            oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
        elif oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        return OutboxStats(int(pending), oldest, int(refused or 0))

    async def count_audit(self, actions: Iterable[str]) -> int:
        n = await self._s.scalar(select(func.count()).where(AuditRow.action.in_(list(actions))))
        return int(n or 0)

    # ------------------------------------------------------------------ retention

    async def wiped_demande_ids(self) -> set[int]:
        rows = await self._s.scalars(select(DemandeRow.id).where(DemandeRow.dossier_enc == WIPED))
        return set(rows)

    async def wipe_demande(self, demande_id: int, *, now: datetime) -> WipeReport:
        """Overwrite every sealed copy of the demande's personal data; idempotent."""
        row = await self._s.get(DemandeRow, demande_id)
        if row is None:
            raise LookupError(f"demande {demande_id}")
        row.objet_enc = WIPED
        row.dossier_enc = WIPED
        drafts = await self._s.execute(
            update(DraftRow)
            .where(
                (DraftRow.demande_id == demande_id)
                | (DraftRow.id == (row.draft_id if row.draft_id is not None else -1)),
                DraftRow.form_enc != WIPED,
            )
            .values(form_enc=WIPED, updated_at=now)
            .returning(DraftRow.id)
        )
        outbox = 0
        if row.room_id is not None:
            outbox = await self._blank_outbox(OutboxMessageRow.room_id == row.room_id, now)
        emails = await self._blank_email_content(demande_id)
        await self._s.flush()
        return WipeReport(len(drafts.all()), outbox, emails)

    async def draft_room(self, draft_id: int) -> tuple[str, datetime] | None:
        """The direct chat of a draft and its last change (its confirmation, once confirmed)."""
        row = await self._s.get(DraftRow, draft_id)
        return None if row is None else (row.dm_room_id, row.updated_at)

    async def wipe_stale_drafts(self, before: datetime, *, now: datetime) -> int:
        """Drafts never confirmed, untouched since `before`: their form is wiped."""
        result = await self._s.execute(
            update(DraftRow)
            .where(
                DraftRow.state != "confirmed",
                DraftRow.updated_at < before,
                DraftRow.form_enc != WIPED,
            )
            .values(form_enc=WIPED, updated_at=now)
            .returning(DraftRow.id)
        )
        return len(result.all())

    async def blank_sent_outbox(self, before: datetime, *, now: datetime) -> int:
        """Sent messages keep their transaction ID (idempotency), not their content."""
        return await self._blank_outbox(
            (OutboxMessageRow.created_at < before) & OutboxMessageRow.sent_at.is_not(None), now
        )

    async def _blank_outbox(self, where: Any, now: datetime) -> int:
        # Unsent messages of a purged room can never be delivered: settle them too.
        result = await self._s.execute(
            update(OutboxMessageRow)
            .where(where, OutboxMessageRow.content_enc != WIPED)
            .values(
                content_enc=WIPED,
                sent_at=func.coalesce(OutboxMessageRow.sent_at, now),
                event_id=func.coalesce(OutboxMessageRow.event_id, "!purged"),
            )
            .returning(OutboxMessageRow.txn_id)
        )
        return len(result.all())

    async def _blank_email_content(self, demande_id: int) -> int:
        """The email bridge's sealed copies (mails sent and received for the demande)."""
        tables = Base.metadata.tables
        count = 0
        for name, columns in (
            ("email_outbox", {"message_enc": WIPED}),
            ("email_inbox", {"raw_enc": WIPED, "uploads_enc": None, "parsed_enc": None}),
            ("email_digest_items", {"body_enc": WIPED}),  # held for a digest: never sent
        ):
            table = tables.get(name)
            if table is None or any(c not in table.c for c in columns):
                continue
            result = await self._s.execute(
                update(table).where(table.c.demande_id == demande_id).values(**columns)
            )
            count += int(getattr(result, "rowcount", 0) or 0)
        return count

    async def purge_audit_before(self, before: datetime) -> int:
        """Delete audit entries older than `before`, through the triggers' permit."""
        permit = permit_value(before)
        self._s.add(BotStateRow(key=AUDIT_PURGE_PERMIT_KEY, value=permit))
        await self._s.flush()
        result = await self._s.execute(
            delete(AuditRow).where(AuditRow.at < before).returning(AuditRow.id)
        )
        removed = len(result.all())
        await self._s.execute(delete(BotStateRow).where(BotStateRow.key == AUDIT_PURGE_PERMIT_KEY))
        return removed

    async def audit_details(self, action: str) -> list[tuple[str | None, datetime, dict[str, Any]]]:
        """(reference, at, details) of every entry of one action, oldest first."""
        rows = await self._s.execute(
            select(AuditRow.reference, AuditRow.at, AuditRow.details)
            .where(AuditRow.action == action)
            .order_by(AuditRow.id)
        )
        return [(ref, at, dict(details)) for ref, at, details in rows]

    async def audit_for_references(
        self, references: Sequence[str], actions: Sequence[str]
    ) -> list[tuple[str, str, datetime]]:
        rows = await self._s.execute(
            select(AuditRow.reference, AuditRow.action, AuditRow.at).where(
                AuditRow.reference.in_(list(references)), AuditRow.action.in_(list(actions))
            )
        )
        return [(ref, action, at) for ref, action, at in rows if ref is not None]
