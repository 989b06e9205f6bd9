"""The email bridge's part of `Tx` (a mixin: `Tx` inherits it, nothing else does).

Same rules as the rest of the repository: both dialects, idempotent writes with
``ON CONFLICT``, message bodies sealed with the `FieldCipher` bound to their row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from bot.store.email_models import (
    INBOX_STATES,
    EmailDemandeMuteRow,
    EmailDigestItemRow,
    EmailFailureRow,
    EmailInboxRow,
    EmailOutboxRow,
    EmailPreferenceRow,
    ReplyTokenRow,
)
from bot.store.models import AgentRow, DemandeRow, ParticipantRow
from bot.store.tx_base import TxBase


@dataclass(frozen=True, slots=True)
class ReplyBinding:
    """A live reply token: the demande and the (still participating, active) agent."""

    digest: str
    demande_id: int
    reference: str
    room_id: str | None
    agent_id: int
    agent_email: str
    participant_kind: str


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    id: int
    event_key: str
    recipient: str
    kind: str
    demande_id: int | None
    author: str | None
    message_id: str
    envelope_from: str
    message: bytes
    created_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class DigestItem:
    """One email held for an agent's daily digest (`body`: what the bridge sealed)."""

    id: int
    agent_id: int
    demande_id: int
    event_key: str
    body: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EmailState:
    """Delivery state of one outbox row (no content): for tests, health and metrics."""

    id: int
    event_key: str
    recipient: str
    kind: str
    demande_id: int | None
    message_id: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class InboundRecord:
    id: int
    key: str
    token_digest: str
    demande_id: int
    agent_email: str
    sender: str | None
    message_id: str | None
    kind: str
    state: str
    received_at: datetime
    posted_at: datetime | None
    event_id: str | None
    uploads: list[dict[str, Any]] | None


def _outbox_aad(event_key: str, recipient: str) -> bytes:
    return b"email_outbox:message:" + event_key.encode() + b"\x00" + recipient.encode()


def _inbox_aad(key: str) -> bytes:
    return b"email_inbox:raw:" + key.encode()


def _uploads_aad(key: str) -> bytes:
    return b"email_inbox:uploads:" + key.encode()


def _parsed_aad(key: str) -> bytes:
    return b"email_inbox:parsed:" + key.encode()


class EmailTx(TxBase):
    # ------------------------------------------------------------------ reply tokens

    async def reply_token_generation(self, demande_id: int, agent_email: str) -> int | None:
        """The generation of the live token of (demande, agent), if there is one."""
        return await self._s.scalar(
            select(ReplyTokenRow.generation).where(
                ReplyTokenRow.demande_id == demande_id,
                ReplyTokenRow.agent_email == agent_email.lower(),
                ReplyTokenRow.revoked_at.is_(None),
            )
        )

    async def last_reply_token_generation(self, demande_id: int, agent_email: str) -> int:
        value = await self._s.scalar(
            select(func.max(ReplyTokenRow.generation)).where(
                ReplyTokenRow.demande_id == demande_id,
                ReplyTokenRow.agent_email == agent_email.lower(),
            )
        )
        return int(value or 0)

    async def add_reply_token(
        self, *, digest: str, demande_id: int, agent_email: str, generation: int, now: datetime
    ) -> None:
        stmt = (
            self._insert(ReplyTokenRow)
            .values(
                digest=digest,
                demande_id=demande_id,
                agent_email=agent_email.lower(),
                generation=generation,
                created_at=now,
            )
            .on_conflict_do_nothing()
        )
        await self._s.execute(stmt)

    async def reply_token_binding(self, digest: str) -> ReplyBinding | None:
        """The binding of a token digest, only while it is live: not revoked, the demande's
        participant still active and still holding that address, the agent active."""
        stmt = (
            select(ReplyTokenRow, DemandeRow.reference, DemandeRow.room_id, ParticipantRow)
            .join(DemandeRow, DemandeRow.id == ReplyTokenRow.demande_id)
            .join(
                ParticipantRow,
                (ParticipantRow.demande_id == ReplyTokenRow.demande_id)
                & (ParticipantRow.email == ReplyTokenRow.agent_email)
                & ParticipantRow.removed_at.is_(None),
            )
            .join(
                AgentRow,
                (AgentRow.id == ParticipantRow.agent_id)
                & (AgentRow.email == ReplyTokenRow.agent_email)
                & AgentRow.active.is_(True),
            )
            .where(ReplyTokenRow.digest == digest, ReplyTokenRow.revoked_at.is_(None))
        )
        row = (await self._s.execute(stmt)).first()
        if row is None:
            return None
        token, reference, room_id, participant = row
        return ReplyBinding(
            digest=token.digest,
            demande_id=token.demande_id,
            reference=reference,
            room_id=room_id,
            agent_id=participant.agent_id,
            agent_email=token.agent_email,
            participant_kind=participant.kind,
        )

    async def revoke_reply_tokens(
        self, *, demande_id: int | None = None, agent_email: str | None = None, now: datetime
    ) -> int:
        """Revoke the live tokens of a demande, of an agent, or of both; returns how many."""
        if demande_id is None and agent_email is None:
            raise ValueError("revoke_reply_tokens needs a demande, an agent, or both")
        stmt = update(ReplyTokenRow).where(ReplyTokenRow.revoked_at.is_(None))
        if demande_id is not None:
            stmt = stmt.where(ReplyTokenRow.demande_id == demande_id)
        if agent_email is not None:
            stmt = stmt.where(ReplyTokenRow.agent_email == agent_email.lower())
        result = await self._s.execute(stmt.values(revoked_at=now).returning(ReplyTokenRow.digest))
        return len(result.all())

    # ------------------------------------------------------------------ outbox

    async def enqueue_email(
        self,
        *,
        event_key: str,
        recipient: str,
        kind: str,
        demande_id: int | None,
        author: str | None,
        message_id: str,
        envelope_from: str,
        message: bytes,
        now: datetime,
    ) -> bool:
        """False if this (event, recipient) is already queued: enqueueing is idempotent."""
        recipient = recipient.lower()
        stmt = (
            self._insert(EmailOutboxRow)
            .values(
                event_key=event_key,
                recipient=recipient,
                kind=kind,
                demande_id=demande_id,
                author=author,
                message_id=message_id,
                envelope_from=envelope_from,
                message_enc=self._cipher.encrypt(message, _outbox_aad(event_key, recipient)),
                created_at=now,
                attempts=0,
                next_attempt_at=now,
            )
            .on_conflict_do_nothing(index_elements=["event_key", "recipient"])
            .returning(EmailOutboxRow.id)
        )
        return (await self._s.execute(stmt)).first() is not None

    def _to_outgoing(self, r: EmailOutboxRow) -> OutgoingEmail:
        return OutgoingEmail(
            id=r.id,
            event_key=r.event_key,
            recipient=r.recipient,
            kind=r.kind,
            demande_id=r.demande_id,
            author=r.author,
            message_id=r.message_id,
            envelope_from=r.envelope_from,
            message=self._cipher.decrypt(r.message_enc, _outbox_aad(r.event_key, r.recipient)),
            created_at=r.created_at,
            attempts=r.attempts,
        )

    @staticmethod
    def _pending_email() -> Any:
        return EmailOutboxRow.delivered_at.is_(None) & EmailOutboxRow.failed_at.is_(None)

    async def due_emails(self, now: datetime, limit: int = 100) -> list[OutgoingEmail]:
        stmt = (
            select(EmailOutboxRow)
            .where(self._pending_email(), EmailOutboxRow.next_attempt_at <= now)
            .order_by(EmailOutboxRow.next_attempt_at, EmailOutboxRow.id)
            .limit(limit)
        )
        return [self._to_outgoing(r) for r in await self._s.scalars(stmt)]

    async def next_email_due(self) -> datetime | None:
        return await self._s.scalar(
            select(func.min(EmailOutboxRow.next_attempt_at)).where(self._pending_email())
        )

    async def email_delivered(self, email_id: int, now: datetime) -> None:
        await self._s.execute(
            update(EmailOutboxRow)
            .where(EmailOutboxRow.id == email_id, EmailOutboxRow.delivered_at.is_(None))
            .values(delivered_at=now, attempts=EmailOutboxRow.attempts + 1, last_error=None)
        )

    async def email_retry_later(self, email_id: int, *, error: str, at: datetime) -> None:
        await self._s.execute(
            update(EmailOutboxRow)
            .where(EmailOutboxRow.id == email_id)
            .values(attempts=EmailOutboxRow.attempts + 1, next_attempt_at=at, last_error=error)
        )

    async def email_failed(self, email_id: int, *, error: str, now: datetime) -> bool:
        """True if this call is the one that failed it (so the room is told once)."""
        result = await self._s.execute(
            update(EmailOutboxRow)
            .where(EmailOutboxRow.id == email_id, self._pending_email())
            .values(failed_at=now, last_error=error, attempts=EmailOutboxRow.attempts + 1)
            .returning(EmailOutboxRow.id)
        )
        return result.first() is not None

    async def email_states(
        self,
        *,
        demande_id: int | None = None,
        event_key: str | None = None,
        message_id: str | None = None,
    ) -> list[EmailState]:
        stmt = select(EmailOutboxRow).order_by(EmailOutboxRow.id)
        if demande_id is not None:
            stmt = stmt.where(EmailOutboxRow.demande_id == demande_id)
        if event_key is not None:
            stmt = stmt.where(EmailOutboxRow.event_key == event_key)
        if message_id is not None:
            stmt = stmt.where(EmailOutboxRow.message_id == message_id)
        return [
            EmailState(
                id=r.id,
                event_key=r.event_key,
                recipient=r.recipient,
                kind=r.kind,
                demande_id=r.demande_id,
                message_id=r.message_id,
                attempts=r.attempts,
                created_at=r.created_at,
                next_attempt_at=r.next_attempt_at,
                delivered_at=r.delivered_at,
                failed_at=r.failed_at,
                last_error=r.last_error,
            )
            for r in await self._s.scalars(stmt)
        ]

    async def emails_of_event(self, event_key: str) -> list[OutgoingEmail]:
        stmt = (
            select(EmailOutboxRow)
            .where(EmailOutboxRow.event_key == event_key)
            .order_by(EmailOutboxRow.id)
        )
        return [self._to_outgoing(r) for r in await self._s.scalars(stmt)]

    # ------------------------------------------------------------------ inbox

    async def inbound_seen(
        self, *, token_digest: str, message_id: str | None, content_hash: str, since: datetime
    ) -> bool:
        """The same mail for the same reply address: same Message-ID, or same content lately."""
        same_content = (EmailInboxRow.content_hash == content_hash) & (
            EmailInboxRow.received_at >= since
        )
        cond = same_content
        if message_id is not None:
            cond = cond | (EmailInboxRow.message_id == message_id)
        found = await self._s.scalar(
            select(EmailInboxRow.id)
            .where(EmailInboxRow.token_digest == token_digest, cond)
            .limit(1)
        )
        return found is not None

    async def add_inbound(
        self,
        *,
        key: str,
        token_digest: str,
        demande_id: int,
        agent_email: str,
        sender: str | None,
        message_id: str | None,
        content_hash: str,
        kind: str,
        state: str,
        raw: bytes,
        now: datetime,
        parsed: bytes | None = None,
    ) -> bool:
        """False if the same Message-ID is already in for this reply address.

        `parsed`: the listener's parse of `raw`, serialised (sealed like `raw`)."""
        if state not in INBOX_STATES:
            raise ValueError(f"inbox state {state!r}")
        stmt = (
            self._insert(EmailInboxRow)
            .values(
                key=key,
                token_digest=token_digest,
                demande_id=demande_id,
                agent_email=agent_email,
                sender=sender,
                message_id=message_id,
                content_hash=content_hash,
                kind=kind,
                state=state,
                size=len(raw),
                raw_enc=self._cipher.encrypt(raw, _inbox_aad(key)),
                parsed_enc=(
                    self._cipher.encrypt(parsed, _parsed_aad(key)) if parsed is not None else None
                ),
                received_at=now,
            )
            .on_conflict_do_nothing()
            .returning(EmailInboxRow.id)
        )
        return (await self._s.execute(stmt)).first() is not None

    def _to_inbound(self, r: EmailInboxRow) -> InboundRecord:
        uploads = None
        if r.uploads_enc is not None:
            uploads = json.loads(self._cipher.decrypt(r.uploads_enc, _uploads_aad(r.key)))
        return InboundRecord(
            id=r.id,
            key=r.key,
            token_digest=r.token_digest,
            demande_id=r.demande_id,
            agent_email=r.agent_email,
            sender=r.sender,
            message_id=r.message_id,
            kind=r.kind,
            state=r.state,
            received_at=r.received_at,
            posted_at=r.posted_at,
            event_id=r.event_id,
            uploads=uploads,
        )

    async def pending_inbound(self, limit: int = 50) -> list[InboundRecord]:
        stmt = (
            select(EmailInboxRow)
            .where(EmailInboxRow.state == "pending")
            .order_by(EmailInboxRow.id)
            .limit(limit)
        )
        return [self._to_inbound(r) for r in await self._s.scalars(stmt)]

    async def pending_inbound_parsed(
        self, limit: int = 50
    ) -> list[tuple[InboundRecord, bytes | None]]:
        """`pending_inbound`, each with what the listener parsed (`inbound_parsed`), from
        the same rows: one read for what the poster needs."""
        stmt = (
            select(EmailInboxRow)
            .where(EmailInboxRow.state == "pending")
            .order_by(EmailInboxRow.id)
            .limit(limit)
        )
        rows = await self._s.scalars(stmt)
        return [(self._to_inbound(r), self._parsed_of(r)) for r in rows]

    def _parsed_of(self, row: EmailInboxRow) -> bytes | None:
        if row.parsed_enc is None:
            return None
        return self._cipher.decrypt(row.parsed_enc, _parsed_aad(row.key))

    async def inbound_awaiting_event(self, limit: int = 200) -> list[InboundRecord]:
        """Posted to the Matrix outbox, but the homeserver has not given the event yet."""
        stmt = (
            select(EmailInboxRow)
            .where(EmailInboxRow.state == "posted", EmailInboxRow.event_id.is_(None))
            .order_by(EmailInboxRow.id)
            .limit(limit)
        )
        return [self._to_inbound(r) for r in await self._s.scalars(stmt)]

    async def inbound_entries(self, *, demande_id: int | None = None) -> list[InboundRecord]:
        stmt = select(EmailInboxRow).order_by(EmailInboxRow.id)
        if demande_id is not None:
            stmt = stmt.where(EmailInboxRow.demande_id == demande_id)
        return [self._to_inbound(r) for r in await self._s.scalars(stmt)]

    async def inbound_state(self, key: str) -> str | None:
        return await self._s.scalar(select(EmailInboxRow.state).where(EmailInboxRow.key == key))

    async def inbound_raw(self, key: str) -> bytes:
        blob = await self._s.scalar(select(EmailInboxRow.raw_enc).where(EmailInboxRow.key == key))
        if blob is None:
            raise LookupError(f"inbox {key}")
        return self._cipher.decrypt(blob, _inbox_aad(key))

    async def inbound_parsed(self, key: str) -> bytes | None:
        """What the listener parsed of this mail (None for rows kept before it did)."""
        blob = await self._s.scalar(
            select(EmailInboxRow.parsed_enc).where(EmailInboxRow.key == key)
        )
        return None if blob is None else self._cipher.decrypt(blob, _parsed_aad(key))

    async def set_inbound_uploads(self, key: str, uploads: Sequence[dict[str, Any]]) -> None:
        blob = self._cipher.encrypt(json.dumps(list(uploads)).encode(), _uploads_aad(key))
        await self._s.execute(
            update(EmailInboxRow).where(EmailInboxRow.key == key).values(uploads_enc=blob)
        )

    async def mark_inbound(
        self, key: str, state: str, *, now: datetime, event_id: str | None = None
    ) -> None:
        if state not in INBOX_STATES:
            raise ValueError(f"inbox state {state!r}")
        values: dict[str, Any] = {"state": state}
        if state == "posted" and event_id is None:
            values["posted_at"] = now
        if event_id is not None:
            values["event_id"] = event_id
        await self._s.execute(
            update(EmailInboxRow).where(EmailInboxRow.key == key).values(**values)
        )

    # ------------------------------------------------------------------ failures, preferences

    async def mark_recipient_failing(self, recipient: str, reason: str, now: datetime) -> int:
        stmt = (
            self._insert(EmailFailureRow)
            .values(
                recipient=recipient.lower(), count=1, first_at=now, last_at=now, last_reason=reason
            )
            .on_conflict_do_update(
                index_elements=["recipient"],
                set_={"count": EmailFailureRow.count + 1, "last_at": now, "last_reason": reason},
            )
            .returning(EmailFailureRow.count)
        )
        count: int = (await self._s.execute(stmt)).scalar_one()
        return count

    async def recipient_failures(self, recipient: str) -> int:
        value = await self._s.scalar(
            select(EmailFailureRow.count).where(EmailFailureRow.recipient == recipient.lower())
        )
        return int(value or 0)

    async def set_email_notifications(self, agent_id: int, notify: bool, now: datetime) -> None:
        stmt = (
            self._insert(EmailPreferenceRow)
            .values(agent_id=agent_id, notify=notify, updated_at=now)
            .on_conflict_do_update(
                index_elements=["agent_id"], set_={"notify": notify, "updated_at": now}
            )
        )
        await self._s.execute(stmt)

    async def agents_notified_by_email(self, agent_ids: Iterable[int]) -> set[int]:
        ids = list(agent_ids)
        if not ids:
            return set()
        rows = await self._s.scalars(
            select(EmailPreferenceRow.agent_id).where(
                EmailPreferenceRow.agent_id.in_(ids), EmailPreferenceRow.notify.is_(True)
            )
        )
        return set(rows)

    # ------------------------------------------------------------ volume (revision 0016)

    async def set_demande_muted(
        self, demande_id: int, agent_id: int, muted: bool, now: datetime
    ) -> None:
        """`!notifications non|oui` by email: this demande's emails stopped or resumed."""
        if not muted:
            await self._s.execute(
                delete(EmailDemandeMuteRow).where(
                    EmailDemandeMuteRow.demande_id == demande_id,
                    EmailDemandeMuteRow.agent_id == agent_id,
                )
            )
            return
        stmt = (
            self._insert(EmailDemandeMuteRow)
            .values(demande_id=demande_id, agent_id=agent_id, created_at=now)
            .on_conflict_do_nothing()
        )
        await self._s.execute(stmt)

    async def muted_agents(self, demande_id: int) -> set[int]:
        rows = await self._s.scalars(
            select(EmailDemandeMuteRow.agent_id).where(EmailDemandeMuteRow.demande_id == demande_id)
        )
        return set(rows)

    async def set_email_digest(self, agent_id: int, hour: int | None, now: datetime) -> None:
        """How often the agent gets a demande's emails: None every one, else a digest at
        `hour` (Paris time) each day."""
        stmt = (
            self._insert(EmailPreferenceRow)
            .values(agent_id=agent_id, notify=False, updated_at=now, digest_hour=hour)
            .on_conflict_do_update(
                index_elements=["agent_id"], set_={"digest_hour": hour, "updated_at": now}
            )
        )
        await self._s.execute(stmt)

    async def email_digest_hours(self, agent_ids: Iterable[int] | None = None) -> dict[int, int]:
        """Agents who chose the daily digest, and its hour (all of them if `agent_ids` is None)."""
        query = select(EmailPreferenceRow.agent_id, EmailPreferenceRow.digest_hour).where(
            EmailPreferenceRow.digest_hour.is_not(None)
        )
        if agent_ids is not None:
            ids = list(agent_ids)
            if not ids:
                return {}
            query = query.where(EmailPreferenceRow.agent_id.in_(ids))
        return {a: int(h) for a, h in (await self._s.execute(query)).all() if h is not None}

    async def add_digest_item(
        self, *, agent_id: int, demande_id: int, event_key: str, body: bytes, now: datetime
    ) -> bool:
        """Hold one email for the agent's digest; False if already held."""
        stmt = (
            self._insert(EmailDigestItemRow)
            .values(
                agent_id=agent_id,
                demande_id=demande_id,
                event_key=event_key,
                body_enc=self._cipher.encrypt(body, _digest_aad(event_key, agent_id)),
                created_at=now,
            )
            .on_conflict_do_nothing()
            .returning(EmailDigestItemRow.id)
        )
        return (await self._s.execute(stmt)).scalar() is not None

    async def pending_digest_items(self) -> list[DigestItem]:
        rows = await self._s.scalars(
            select(EmailDigestItemRow)
            # A wiped demande's held emails (empty body) are never sent.
            .where(EmailDigestItemRow.sent_at.is_(None), EmailDigestItemRow.body_enc != b"")
            .order_by(EmailDigestItemRow.id)
        )
        return [
            DigestItem(
                id=r.id,
                agent_id=r.agent_id,
                demande_id=r.demande_id,
                event_key=r.event_key,
                body=self._cipher.decrypt(r.body_enc, _digest_aad(r.event_key, r.agent_id)),
                created_at=r.created_at,
            )
            for r in rows
        ]

    async def drop_digest_items(self, event_key: str) -> int:
        """A withdrawn message held for a digest: it never goes out."""
        result = await self._s.execute(
            delete(EmailDigestItemRow)
            .where(EmailDigestItemRow.event_key == event_key, EmailDigestItemRow.sent_at.is_(None))
            .returning(EmailDigestItemRow.id)
        )
        return len(result.all())

    async def mark_digest_sent(self, item_ids: Iterable[int], now: datetime) -> None:
        ids = list(item_ids)
        if ids:
            await self._s.execute(
                update(EmailDigestItemRow).where(EmailDigestItemRow.id.in_(ids)).values(sent_at=now)
            )


def _digest_aad(event_key: str, agent_id: int) -> bytes:
    return f"email_digest_items\x00{event_key}\x00{agent_id}".encode()
