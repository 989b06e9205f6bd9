"""The work queues' part of `Tx`: events to retry, rooms to guard, invitations to send,
problems to retry and tell once (tables of `work_models`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from bot.domain.retry import GiveUp, Retry
from bot.store.tx_base import TxBase
from bot.store.work_models import (
    EventRetryRow,
    GuardPendingRow,
    HistoryCopyRow,
    PendingInviteRow,
    WorkProblemRow,
)


@dataclass(frozen=True, slots=True)
class EventRetry:
    event_id: str
    room_id: str
    source: dict[str, Any]  # the event as it was handled (decrypted when it was encrypted)
    decrypted: bool
    attempts: int


@dataclass(frozen=True, slots=True)
class PendingInvite:
    room_id: str
    user_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class WorkProblem:
    kind: str
    key: str
    attempts: int
    first_failed_at: datetime
    next_attempt_at: datetime
    last_error: str
    notified_at: datetime | None


def _retry_aad(event_id: str) -> bytes:
    return b"event_retries:source:" + event_id.encode("utf-8")


class WorkTx(TxBase):
    # ------------------------------------------------------------------ events

    async def event_failure_count(self, event_id: str) -> int:
        attempts = await self._s.scalar(
            select(EventRetryRow.attempts).where(EventRetryRow.event_id == event_id)
        )
        return int(attempts or 0)

    async def record_event_failure(
        self,
        *,
        event_id: str,
        room_id: str,
        source: Mapping[str, Any],
        decrypted: bool,
        error: str,
        outcome: Retry | GiveUp,
        now: datetime,
    ) -> None:
        """Keep (or update) the event to retry, as `outcome` decided."""
        row = await self._s.get(EventRetryRow, event_id)
        next_at = outcome.at if isinstance(outcome, Retry) else None
        given_up = now if isinstance(outcome, GiveUp) else None
        if row is None:
            self._s.add(
                EventRetryRow(
                    event_id=event_id,
                    room_id=room_id,
                    source_enc=self._cipher.encrypt_json(dict(source), _retry_aad(event_id)),
                    decrypted=decrypted,
                    attempts=outcome.attempts,
                    first_failed_at=now,
                    next_attempt_at=next_at,
                    last_error=error[:200],
                    given_up_at=given_up,
                    done_at=None,
                )
            )
            await self._s.flush()
            return
        row.attempts = outcome.attempts
        row.next_attempt_at = next_at
        row.last_error = error[:200]
        row.given_up_at = given_up

    async def due_event_retries(self, now: datetime, limit: int = 50) -> list[EventRetry]:
        rows = await self._s.scalars(
            select(EventRetryRow)
            .where(EventRetryRow.next_attempt_at.is_not(None))
            .where(EventRetryRow.next_attempt_at <= now)
            .order_by(EventRetryRow.next_attempt_at)
            .limit(limit)
        )
        return [
            EventRetry(
                r.event_id,
                r.room_id,
                self._cipher.decrypt_json(r.source_enc, _retry_aad(r.event_id)),
                r.decrypted,
                r.attempts,
            )
            for r in rows
        ]

    async def next_event_retry_at(self) -> datetime | None:
        return await self._s.scalar(
            select(func.min(EventRetryRow.next_attempt_at)).where(
                EventRetryRow.next_attempt_at.is_not(None)
            )
        )

    async def event_retry_done(self, event_id: str, now: datetime) -> None:
        await self._s.execute(
            update(EventRetryRow)
            .where(EventRetryRow.event_id == event_id)
            .values(next_attempt_at=None, done_at=now)
        )

    async def event_retry_counts(self) -> dict[str, int]:
        """How many events wait for a retry, and how many were given up (for health)."""
        waiting = await self._s.scalar(
            select(func.count()).where(EventRetryRow.next_attempt_at.is_not(None))
        )
        given_up = await self._s.scalar(
            select(func.count()).where(EventRetryRow.given_up_at.is_not(None))
        )
        return {"waiting": int(waiting or 0), "given_up": int(given_up or 0)}

    # ------------------------------------------------------------------ guard

    async def request_guard(self, room_id: str, reason: str, now: datetime) -> None:
        """Ask the guard to check this room's membership (idempotent; the first reason stays)."""
        await self._s.execute(
            self._insert(GuardPendingRow)
            .values(room_id=room_id, since=now, reason=reason[:100])
            .on_conflict_do_nothing(index_elements=["room_id"])
        )

    async def guard_requests(self) -> list[tuple[str, datetime]]:
        rows = await self._s.execute(
            select(GuardPendingRow.room_id, GuardPendingRow.since).order_by(GuardPendingRow.since)
        )
        return [(r[0], r[1]) for r in rows]

    async def guard_done(self, room_id: str, since: datetime) -> None:
        """The check asked at `since` is done (a request made after it stays)."""
        await self._s.execute(
            delete(GuardPendingRow).where(
                GuardPendingRow.room_id == room_id, GuardPendingRow.since <= since
            )
        )

    # ------------------------------------------------------------------ invitations

    async def add_pending_invite(self, room_id: str, user_id: str, now: datetime) -> None:
        await self._s.execute(
            self._insert(PendingInviteRow)
            .values(
                room_id=room_id,
                user_id=user_id,
                since=now,
                attempts=0,
                next_attempt_at=now,
                last_error=None,
            )
            .on_conflict_do_update(
                index_elements=["room_id", "user_id"], set_={"next_attempt_at": now}
            )
        )

    async def due_invites(self, now: datetime, room_id: str | None = None) -> list[PendingInvite]:
        stmt = select(PendingInviteRow).where(PendingInviteRow.next_attempt_at <= now)
        if room_id is not None:
            stmt = stmt.where(PendingInviteRow.room_id == room_id)
        rows = await self._s.scalars(stmt.order_by(PendingInviteRow.since))
        return [PendingInvite(r.room_id, r.user_id, r.attempts) for r in rows]

    async def invite_done(self, room_id: str, user_id: str) -> None:
        await self._s.execute(
            delete(PendingInviteRow).where(
                PendingInviteRow.room_id == room_id, PendingInviteRow.user_id == user_id
            )
        )

    async def invite_retry_later(
        self, room_id: str, user_id: str, *, attempts: int, error: str, at: datetime
    ) -> None:
        await self._s.execute(
            update(PendingInviteRow)
            .where(PendingInviteRow.room_id == room_id, PendingInviteRow.user_id == user_id)
            .values(attempts=attempts, next_attempt_at=at, last_error=error[:200])
        )

    async def pending_invite_count(self) -> int:
        return int(await self._s.scalar(select(func.count()).select_from(PendingInviteRow)) or 0)

    # ------------------------------------------------------------------ history copies

    async def add_history_copy(
        self, room_id: str, user_id: str, join_event_id: str, now: datetime
    ) -> None:
        await self._s.execute(
            self._insert(HistoryCopyRow)
            .values(room_id=room_id, user_id=user_id, join_event_id=join_event_id, since=now)
            .on_conflict_do_nothing(index_elements=["room_id", "user_id"])
        )

    async def history_copies(self) -> list[tuple[str, str, str]]:
        """(room, user, join event) of every copy still owed, oldest first."""
        rows = await self._s.execute(
            select(
                HistoryCopyRow.room_id, HistoryCopyRow.user_id, HistoryCopyRow.join_event_id
            ).order_by(HistoryCopyRow.since)
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def history_copy_done(self, room_id: str, user_id: str) -> None:
        await self._s.execute(
            delete(HistoryCopyRow).where(
                HistoryCopyRow.room_id == room_id, HistoryCopyRow.user_id == user_id
            )
        )

    # ------------------------------------------------------------------ problems

    async def work_problem(self, kind: str, key: str) -> WorkProblem | None:
        row = await self._s.get(WorkProblemRow, (kind, key))
        if row is None or row.resolved_at is not None:
            return None
        return _problem(row)

    async def record_work_problem(
        self, kind: str, key: str, *, error: str, attempts: int, next_at: datetime, now: datetime
    ) -> WorkProblem:
        row = await self._s.get(WorkProblemRow, (kind, key))
        if row is None:
            row = WorkProblemRow(
                kind=kind,
                key=key,
                attempts=attempts,
                first_failed_at=now,
                next_attempt_at=next_at,
                last_error=error[:200],
                notified_at=None,
                resolved_at=None,
            )
            self._s.add(row)
        else:
            if row.resolved_at is not None:  # a new episode
                row.first_failed_at, row.notified_at, row.resolved_at = now, None, None
            row.attempts, row.next_attempt_at, row.last_error = attempts, next_at, error[:200]
        await self._s.flush()
        return _problem(row)

    async def work_problem_notified(self, kind: str, key: str, now: datetime) -> None:
        await self._s.execute(
            update(WorkProblemRow)
            .where(WorkProblemRow.kind == kind, WorkProblemRow.key == key)
            .values(notified_at=now)
        )

    async def work_problem_resolved(self, kind: str, key: str, now: datetime) -> bool:
        result = await self._s.execute(
            update(WorkProblemRow)
            .where(
                WorkProblemRow.kind == kind,
                WorkProblemRow.key == key,
                WorkProblemRow.resolved_at.is_(None),
            )
            .values(resolved_at=now)
        )
        return bool(getattr(result, "rowcount", 0))

    async def work_problems(self, kind: str | None = None) -> list[WorkProblem]:
        stmt = select(WorkProblemRow).where(WorkProblemRow.resolved_at.is_(None))
        if kind is not None:
            stmt = stmt.where(WorkProblemRow.kind == kind)
        rows = await self._s.scalars(stmt.order_by(WorkProblemRow.first_failed_at))
        return [_problem(r) for r in rows]


def _problem(row: WorkProblemRow) -> WorkProblem:
    return WorkProblem(
        row.kind,
        row.key,
        row.attempts,
        row.first_failed_at,
        row.next_attempt_at,
        row.last_error,
        row.notified_at,
    )
