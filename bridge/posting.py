"""Email → Matrix, the posting side: from the inbox to the demande room, exactly once.

Each pending inbox row is moved to the Matrix outbox in one transaction (the
attributed message, its files, the quick answer's effect, the emails to the
other participants, and the row marked posted). The Matrix outbox then sends
with a transaction ID derived from the row's key, retried while the homeserver
is down: a crash anywhere gives, on restart, the same single event.

Attachments are uploaded (encrypted) before that transaction, and what was
uploaded is recorded, so a retry does not upload again.
"""

from __future__ import annotations

import asyncio
import html as html_lib
import logging
import re
from typing import Any

from bot.matrix import attachments as files
from bot.matrix import content as mx
from bot.matrix.port import Gateway
from bot.ports import Author, Sender
from bot.services.clock import Clock
from bot.services.demande_room import DemandeRooms, ParticipantMessage
from bot.services.worker import Worker
from bot.settings import EmailSettings
from bot.store.db import Store
from bot.store.email_tx import InboundRecord
from bridge.inbound import stored
from bridge.inbound.attachments import REFUSAL_LABELS
from bridge.inbound.mail import InboundMail
from bridge.inbound.parse import parse_inbound

log = logging.getLogger(__name__)

_REFUSALS = REFUSAL_LABELS


# How long after a post its event ID is recorded on the inbox row (see `_record_later`).
RECORD_AFTER_S = 1.0


def txn_of(key: str) -> str:
    """The Matrix transaction ID of the message bridging inbox row `key`."""
    return f"email-{key}"


# "@room" as a whole word is what the legacy `.m.rule.roomnotif` push rule looks for.
_ROOM_PING_RE = re.compile(r"@(room)\b", re.IGNORECASE)
WORD_JOINER = "\u2060"


def no_room_ping(text: str) -> str:
    """`text` reading the same, but no longer the word ``@room`` (a word joiner after @)."""
    return _ROOM_PING_RE.sub(lambda m: f"@{WORD_JOINER}{m.group(1)}", text)


def mentioning_nobody(content: dict[str, Any]) -> dict[str, Any]:
    """The bot posts email content with creator power: it must ping no one.

    An empty ``m.mentions`` turns off the body-matching mention rules in clients and
    servers that know intentional mentions (the room mention then needs
    ``m.mentions.room``); the body loses its ``@room`` word for those that do not.
    """
    content = dict(content)
    content["body"] = no_room_ping(str(content.get("body", "")))
    if "formatted_body" in content:
        content["formatted_body"] = no_room_ping(str(content["formatted_body"]))
    content["m.mentions"] = {}
    return content


def attributed(label: str, text: str, **marker: Any) -> dict[str, Any]:
    """« **Marie Durand (CAF 95, par courriel)** : … » as an m.text content."""
    body = f"{label} : {text}" if "\n" not in text else f"{label} :\n{text}"
    paragraphs = html_lib.escape(text).replace("\n", "<br>")
    html = f"<strong>{html_lib.escape(label)}</strong> : {paragraphs}"
    return mentioning_nobody(mx.text(body, html, **marker))


class InboxPoster:
    def __init__(
        self,
        *,
        store: Store,
        rooms: DemandeRooms,
        gateway: Gateway,
        sender: Sender,
        settings: EmailSettings,
        clock: Clock,
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.gateway = gateway  # uploads only: the outbox posts
        self.sender = sender
        self.settings = settings
        self.clock = clock
        self._lock = asyncio.Lock()
        self.worker = Worker("email posting", self.flush, idle_seconds=30.0, max_backoff_seconds=10)
        # The event IDs of what was posted are recorded a moment later (`RECORD_AFTER_S`),
        # once the outbox has sent it: not in the way of the send itself.
        self._record_timer: asyncio.TimerHandle | None = None
        self._record_due = False

    def wake(self) -> None:
        self.worker.wake()

    async def run(self) -> None:
        await self.worker.run()

    async def flush(self) -> int:
        """Move what is pending into the Matrix outbox (which sends it). Raises an outage
        error while the homeserver is down (uploads): the rows stay pending."""
        posted = 0
        async with self._lock:
            async with self.store.transaction() as tx:
                pending = await tx.pending_inbound_parsed()
            for record, parsed in pending:
                if await self._post(record, parsed):
                    posted += 1
            if posted:
                self._record_later()
            if not posted or self._record_due:
                self._record_due = False
                async with self.store.transaction() as tx:
                    waiting = await tx.inbound_awaiting_event()
                if waiting:
                    await self._record_event_ids(waiting)
        return posted

    def _record_later(self) -> None:
        """A flush soon, to record the event IDs of what was just posted: right after the
        commit, the outbox is sending it, and these transactions would only delay it."""
        if self._record_timer is not None:
            return

        def due() -> None:
            self._record_timer = None
            self._record_due = True
            self.wake()

        self._record_timer = asyncio.get_running_loop().call_later(RECORD_AFTER_S, due)

    async def _parse(self, record: InboundRecord, parsed: bytes | None) -> InboundMail:
        """The mail as the listener parsed it when it accepted it (`parsed`, read with the
        pending rows)."""
        if parsed is not None:
            return stored.decode(parsed)
        async with self.store.transaction() as tx:
            parsed = await tx.inbound_parsed(record.key)
            raw = await tx.inbound_raw(record.key) if parsed is None else b""
        if parsed is not None:
            return stored.decode(parsed)
        # A row kept before the listener stored its parse (upgrade): parse it here.
        s = self.settings
        return await asyncio.to_thread(
            parse_inbound,
            raw,
            max_attachment_bytes=s.max_inbound_attachment_bytes,
            allowed_types=s.allowed_attachment_types,
            trusted_authserv_ids=s.trusted_authserv_ids,
        )

    async def _post(self, record: InboundRecord, parsed: bytes | None) -> str | None:
        mail = await self._parse(record, parsed)
        uploads = record.uploads
        if uploads is None and mail.attachments:
            uploads = []
            for att in mail.attachments:
                file = await self.gateway.upload_attachment(att.data, att.filename)
                uploads.append(
                    {
                        "file": file,
                        "filename": att.filename,
                        "content_type": att.content_type,
                        "size": att.size,
                    }
                )
            async with self.store.transaction() as tx:
                await tx.set_inbound_uploads(record.key, uploads)
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if await tx.inbound_state(record.key) != "pending":
                return None  # posted meanwhile
            demande = await tx.get_demande(record.demande_id)
            agent = await tx.get_agent_by_email(record.agent_email)
            # Checked again here, not only when the reply was accepted: the agent may have
            # been deactivated, or left the demande, in between.
            participant = next(
                (
                    p
                    for p in await tx.participants(record.demande_id)
                    if agent is not None and p.agent_id == agent.id
                ),
                None,
            )
            if (
                demande is None
                or not demande.room_id
                or agent is None
                or not agent.active
                or participant is None
            ):
                await tx.mark_inbound(record.key, "dropped", now=now)
                await tx.audit(
                    "email_reply_dropped",
                    actor=record.agent_email,
                    reference=demande.reference if demande else None,
                    details={"inbox": record.key, "why": _why_dropped(agent, participant)},
                    now=now,
                )
                if demande is not None and demande.room_id and agent is not None:
                    await self.sender.enqueue(
                        tx,
                        txn_id=f"{txn_of(record.key)}-dropped",
                        room_id=demande.room_id,
                        content=mx.notice(
                            f"Une réponse par courriel de {agent.display_name} n'a pas été "
                            "publiée : cette personne ne participe plus à la demande."
                        ),
                    )
                return None
            group = await tx.get_group(agent.group_id) if agent.group_id else None
            label = f"{agent.display_name} ({group.name + ', ' if group else ''}par courriel)"
            # A quick answer, or any other command line (one path: the room's commands).
            command = f"!{mail.command.value}" if mail.command else mail.command_line
            shown = "\n".join(x for x in (command or "", mail.text) if x)
            notes = [
                f"(pièce jointe « {r.filename} » non transmise : "
                f"{_REFUSALS.get(r.reason, 'refusée')})"
                for r in mail.refused_attachments
            ]
            shown = "\n".join(x for x in (shown, *notes) if x) or "(message sans texte)"
            bridged = {
                "via": "email",
                "agent_id": agent.id,
                "name": agent.display_name,
                "email": agent.email,
                "inbox": record.key,
            }
            key = txn_of(record.key)
            await self.sender.enqueue(
                tx,
                txn_id=key,
                room_id=demande.room_id,
                content=attributed(label, shown, bridged=bridged),
            )
            for index, up in enumerate(uploads or []):
                await self.sender.enqueue(
                    tx,
                    txn_id=f"{key}-att-{index}",
                    room_id=demande.room_id,
                    content=mentioning_nobody(
                        files.file_content(
                            up["file"],
                            filename=up["filename"],
                            mimetype=up["content_type"],
                            size=up["size"],
                            marker={"bridged": bridged},
                        )
                    ),
                )
            await self.rooms.on_participant_message(
                tx,
                demande,
                ParticipantMessage(
                    author=Author(agent, "email"),
                    key=key,
                    command=command,
                    text=mail.text,
                    content={"msgtype": "m.text", "body": mail.text},
                ),
                participant.kind,
            )
            await tx.mark_inbound(record.key, "posted", now=now)
            await tx.audit(
                "email_reply_posted",
                actor=record.agent_email,
                reference=demande.reference,
                details={"inbox": record.key, "command": (command or "").split(" ")[0].lstrip("!")},
                now=now,
            )
        return demande.room_id

    async def _record_event_ids(self, records: list[InboundRecord]) -> None:
        async with self.store.transaction() as tx:
            for record in records:
                event_id = await tx.message_event_id(txn_of(record.key))
                if event_id:
                    now = self.clock.now()
                    await tx.mark_inbound(record.key, "posted", now=now, event_id=event_id)


def _why_dropped(agent: Any, participant: Any) -> str:
    if agent is None:
        return "unknown_agent"
    if not agent.active:
        return "agent_deactivated"
    if participant is None:
        return "not_a_participant"
    return "no_room"
