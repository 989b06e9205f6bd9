"""Life in a demande room: participants' messages and commands, status, the dossier for
newcomers, files and withdrawals for the email bridge.

One path for a participant's message, whether it came from Matrix or by email
(`on_participant_message`, with an `Author`): the same checks, the same commands, the
same audit. A command runs in a savepoint of the event's transaction: a handler that
fails leaves nothing of its work, only the refusal and its audit entry are committed,
and an outage is raised so that the event is tried again.

Membership and protected state are the guard's (`bot.services.room_guard`): this
service only asks it to look.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nio import (
    BadEvent,
    MegolmEvent,
    ReactionEvent,
    RedactionEvent,
    RoomEncryptedMedia,
    RoomMemberEvent,
    RoomMessageText,
    UnknownBadEvent,
)

from bot.commands.framework import (
    CommandFailed,
    NotACommand,
    Parsed,
    ParseFailure,
    Reply,
    failure_reply,
)
from bot.commands.room import ROOM, RoomCtx
from bot.domain import closing
from bot.domain import status as status_rules
from bot.domain.model import Demande, Status, Usefulness
from bot.matrix import attachments as files
from bot.matrix import content as mx
from bot.ports import Author, EmailHooks, MailTx, PoliciesRef, Sender
from bot.services.clock import Clock
from bot.services.companion import Companions
from bot.services.dossier_view import dossier_content
from bot.services.failures import database_unavailable, homeserver_outage
from bot.services.history import HistoryCopies
from bot.services.room_guard import RoomGuard
from bot.services.room_specs import RoomSpecs
from bot.services.undecryptable import Undecryptables
from bot.services.worker import Wakeup
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)


# Not offered by email: the help (its answer is the list itself) and the companion room
# (Matrix only).
NOT_BY_EMAIL = frozenset({"aide", "entreinstructeurs"})


@dataclass(frozen=True, slots=True)
class ParticipantMessage:
    """What a participant wrote: a command line, free text, or both (an email's first
    line can be a quick answer followed by a sentence)."""

    author: Author
    key: str  # unique to the message: the event ID, or the email's key
    command: str | None
    text: str
    content: Mapping[str, Any]  # what the email bridge forwards of the free text


class DemandeRooms:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        policies: PoliciesRef,
        specs: RoomSpecs,
        guard: RoomGuard,
        email: EmailHooks,
        sender: Sender,
        undecryptables: Undecryptables,
        max_attachment_bytes: int,
        history: HistoryCopies | None = None,
        spaces: Wakeup | None = None,
        companions: Companions | None = None,
    ) -> None:
        self.sender = sender
        self.store = store
        self.clock = clock
        self.policies = policies
        self.specs = specs
        self.guard = guard
        self.email = email
        self.undecryptables = undecryptables
        self.max_attachment_bytes = max_attachment_bytes
        # Copies the earlier exchange for participants who join after the opening.
        self.history = history
        # Wakes the spaces' worker (room names and spaces follow status and participants).
        self.spaces = spaces or Wakeup()
        self.companions = companions

    @property
    def bot_user_id(self) -> str:
        return self.specs.bot_user_id

    # ---------------------------------------------------------------- events
    async def on_event(self, demande: Demande, event: Any) -> None:
        room_id = _room(demande)
        if isinstance(event, RoomMemberEvent):
            await self._on_member(demande, event)
        elif isinstance(event, RoomMessageText):
            await self._on_text(demande, event)
        elif self.oversized_attachment(event):
            await self.refuse_attachment(demande, event)
        elif isinstance(event, RoomEncryptedMedia):
            if self.email.enabled:
                await self._on_file(demande, event)
        elif isinstance(event, RedactionEvent):
            if self.email.enabled:
                await self._on_redaction(demande, event)
        elif isinstance(event, MegolmEvent):
            # Not marked processed: once its key arrives it comes back here decrypted.
            await self.undecryptables.record(room_id, event, reference=demande.reference)
        elif isinstance(event, ReactionEvent):
            usefulness = closing.of_reaction(event.key)
            if usefulness is not None:
                await self._on_click(demande, event, event.reacts_to, usefulness, CLOSE_NOTICE)
        elif _event_type(event) in closing.POLL_RESPONSES:
            answer = closing.poll_answer(event.source.get("content") or {})
            if answer is not None:
                await self._on_click(demande, event, answer[0], answer[1], CLOSE_POLL)
        elif isinstance(event, (BadEvent, UnknownBadEvent)):
            await self._malformed(demande, event)
        else:
            source = getattr(event, "source", None) or {}
            # Not filtered on the sender: Synapse's make_room_admin writes its power-level
            # change *as the room creator*, i.e. as the bot itself.
            if isinstance(source, Mapping) and "state_key" in source:
                await self.guard.on_foreign_state(demande, source)

    def oversized_attachment(self, event: Any) -> bool:
        """An attachment whose declared size is over the service's limit."""
        content = (getattr(event, "source", None) or {}).get("content")
        if not isinstance(content, Mapping) or not files.is_attachment(content):
            return False
        size = files.declared_size(content)
        return size is not None and size > self.max_attachment_bytes

    async def refuse_attachment(self, demande: Demande, event: Any) -> None:
        """Tell the room, once, that the file was not accepted (nothing of it is kept)."""
        size = files.declared_size(event.source["content"])
        limit = self.max_attachment_bytes
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, _room(demande), now):
                return
            await tx.audit(
                "attachment_refused",
                actor=event.sender,
                reference=demande.reference,
                details={"event_id": event.event_id, "size": size, "limit": limit},
                now=now,
            )
            text = str(files.AttachmentTooLarge(size, limit))
            await self._notice(tx, demande, text, txn=f"attachment-{event.event_id}")
        log.info("demande %s: attachment %s refused (too large)", demande.reference, event.event_id)

    async def _malformed(self, demande: Demande, event: BadEvent | UnknownBadEvent) -> None:
        """An event nio could not read (a body that is not text, a broken file object):
        nothing is done with it, but it is accounted for in the audit, once."""
        source = getattr(event, "source", None) or {}
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, _room(demande), now):
                return
            await tx.audit(
                "event_malformed",
                actor=event.sender,
                reference=demande.reference,
                details={"event_id": event.event_id, "type": str(source.get("type", "?"))},
                now=now,
            )
        log.warning("demande %s: malformed event %s ignored", demande.reference, event.event_id)

    async def _on_member(self, demande: Demande, event: RoomMemberEvent) -> None:
        user = event.state_key
        if user == self.bot_user_id:
            return
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, _room(demande), now):
                return
            participants = {p.matrix_id: p for p in await tx.participants(demande.id)}
            participant = participants.get(user)
            if event.membership in ("join", "invite", "knock") and participant is None:
                await tx.audit(
                    "intruder_detected",
                    actor=user,
                    reference=demande.reference,
                    details={"membership": event.membership, "by": event.sender},
                    now=now,
                )
                log.warning(
                    "demande %s: unauthorised %s of %s (by %s)",
                    demande.reference,
                    event.membership,
                    user,
                    event.sender,
                )
                await self.guard.request(tx, _room(demande), "intruder")
            elif (
                participant is not None
                and event.membership == "join"
                and (event.prev_membership != "join")
            ):
                # A real arrival; a join over a join is a profile change (name, avatar).
                await tx.audit("joined", actor=user, reference=demande.reference, now=now)
                if self.history is not None:
                    await self.history.on_join(tx, demande, event, participant.kind)
                # Invitees of the opening got the room key of the dossier; those who came
                # later cannot read it, so it is posted again for them, once each.
                if participant.kind == "invite" and demande.creation_step == "ready":
                    await self._enqueue_dossier(
                        tx,
                        demande,
                        txn=f"dossier-{demande.reference}-for-{participant.agent_id}",
                        newcomer=user,
                    )
            elif event.membership in ("leave", "ban") and event.sender == user:
                await tx.audit("left", actor=user, reference=demande.reference, now=now)
        if self.history is not None and event.membership == "join":
            await self.history.run_pending()

    async def _on_click(
        self, demande: Demande, event: Any, target: str, usefulness: Usefulness, which: str
    ) -> None:
        """A reaction on the « traitée » notice, or an answer to the usefulness poll: the
        same as `!clore <answer>` from that participant (same checks, same reply)."""
        now = self.clock.now()
        async with self.store.transaction() as tx:
            txn = await tx.get_state(which.format(demande_id=demande.id))
            if txn is None or await tx.message_event_id(txn) != target:
                return  # a reaction to another message: nothing to do
            if not await tx.mark_processed(event.event_id, _room(demande), now):
                return
            participant = next(
                (p for p in await tx.participants(demande.id) if p.matrix_id == event.sender),
                None,
            )
            agent = await tx.get_agent_by_matrix_id(event.sender)
            if participant is None or agent is None or not agent.active:
                return  # the guard deals with whoever should not be here
            current = await tx.get_demande(demande.id)
            if current is None or current.status is Status.CLOTUREE:
                return  # already closed (by the other click, or by !clore): no answer
            message = ParticipantMessage(
                author=Author(agent, "matrix"),
                key=event.event_id,
                command=f"!clore {closing.WORDS[usefulness]}",
                text="",
                content={},
            )
            await self.on_participant_message(tx, current, message, participant.kind)

    async def _offer_clicks(self, tx: Tx, demande: Demande, key: str) -> None:
        """After « traitée »: its notice takes reactions, and a poll asks the question."""
        await tx.set_state(CLOSE_NOTICE.format(demande_id=demande.id), f"reply-{key}")
        await tx.set_state(CLOSE_POLL.format(demande_id=demande.id), f"poll-{key}")
        await self.sender.enqueue(
            tx,
            txn_id=f"poll-{key}",
            room_id=_room(demande),
            content=closing.poll_content(demande.reference),
            event_type=closing.POLL_START,
        )

    async def _end_poll(self, tx: Tx, demande: Demande, key: str) -> None:
        """The usefulness poll, if one was sent, shows as ended once the demande is closed."""
        poll_txn = await tx.get_state(CLOSE_POLL.format(demande_id=demande.id))
        poll_event = await tx.message_event_id(poll_txn) if poll_txn else None
        current = await tx.get_demande(demande.id)
        if poll_event is None or current is None or current.status is not Status.CLOTUREE:
            return  # never sent (or not yet), or not closed: nothing to end
        usefulness = current.usefulness
        await self.sender.enqueue(
            tx,
            txn_id=f"poll-end-{key}",
            room_id=_room(demande),
            content=closing.poll_end_content(poll_event, usefulness),
            event_type=closing.POLL_END,
        )

    async def _on_file(self, demande: Demande, event: RoomEncryptedMedia) -> None:
        """An encrypted file posted by a participant: to the email-only participants.

        Fetching the media can fail (its server is down): that is this event's failure,
        raised to the event's guard, which retries it on its own.
        """
        async with self.store.transaction() as tx:
            if await tx.is_processed(event.event_id):
                return
            sender = await tx.get_agent_by_matrix_id(event.sender)
            allowed = {p.matrix_id for p in await tx.participants(demande.id) if p.matrix_id}
        if sender is None or event.sender not in allowed:
            return  # the guard deals with intruders
        content = (getattr(event, "source", None) or {}).get("content") or {}
        await self.email.room_file(demande, event_id=event.event_id, author=sender, content=content)

    async def _on_redaction(self, demande: Demande, event: RedactionEvent) -> None:
        redacted = getattr(event, "redacts", None)
        if not isinstance(redacted, str):
            return
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, _room(demande), self.clock.now()):
                return
            await self.email.redaction(
                tx,
                demande,
                redacted_event_id=redacted,
                redaction_event_id=event.event_id,
                sender=event.sender,
            )

    # ------------------------------------------------------------- messages
    async def _on_text(self, demande: Demande, event: RoomMessageText) -> None:
        body = event.body if isinstance(event.body, str) else ""
        content = (getattr(event, "source", None) or {}).get("content") or {}
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, _room(demande), now):
                return
            participant = next(
                (p for p in await tx.participants(demande.id) if p.matrix_id == event.sender),
                None,
            )
            agent = await tx.get_agent_by_matrix_id(event.sender)
            if participant is None or agent is None or not agent.active:
                # Never act on a message from someone who should not be here.
                await tx.audit(
                    "message_from_unauthorised",
                    actor=event.sender,
                    reference=demande.reference,
                    now=now,
                )
                await self.guard.request(tx, _room(demande), "message_from_unauthorised")
                return
            is_command = not isinstance(ROOM.parse(body), NotACommand)
            message = ParticipantMessage(
                author=Author(agent, "matrix"),
                key=event.event_id,
                command=body if is_command else None,
                text="" if is_command else body,
                content=content or {"msgtype": "m.text", "body": body},
            )
            await self.on_participant_message(tx, demande, message, participant.kind)

    async def on_participant_message(
        self, tx: Tx, demande: Demande, message: ParticipantMessage, participant_kind: str
    ) -> None:
        """A command, an answer that moves the status, or both; in the caller's `tx`.

        The caller has checked that the author takes part in the demande.
        """
        aidant = await tx.get_agent(demande.aidant_agent_id)
        assert aidant is not None
        room_id = _room(demande)
        now = self.clock.now()
        # Acting in a demande, by Matrix or by email, keeps the account active.
        await tx.touch_activity(message.author.agent.id, now)

        async def invite(users: Sequence[str]) -> None:
            await self.guard.invite(tx, room_id, users)

        async def companion() -> str | None:
            assert self.companions is not None
            return await self.companions.request(tx, demande, by=message.author.address)

        ctx = RoomCtx(
            tx=tx,
            demande=demande,
            author=message.author,
            participant_kind=participant_kind,
            aidant=aidant,
            status=self,
            email=self.email,
            rules=self.specs.membership_rules(),
            policies=self.policies.current,
            now=now,
            key=message.key,
            invite=invite,
            companion=companion if self.companions is not None else None,
        )
        if message.command is not None:
            reply = await self._command(ctx, message.command)
            # A command may have invited a group: its space then lists the room, and
            # its instructeurs are invited to the companion room.
            tx.after_commit(self.spaces.set)
            if self.companions is not None:
                tx.after_commit(self.companions.wakeup.set)
            if reply is not None:
                # Marked with the command answered (or as an error): the copy of the
                # exchange for late participants leaves out what only answered a question.
                parsed = ROOM.parse(message.command)
                answered = parsed.spec.name if isinstance(parsed, Parsed) else "?"
                await self.sender.enqueue(
                    tx,
                    txn_id=f"reply-{message.key}",
                    room_id=room_id,
                    content=mx.to_act(
                        reply.text, reply.html, reply.mentions, reply=answered, error=reply.is_error
                    ),
                )
                if answered == "traitee" and not reply.is_error:
                    await self._offer_clicks(tx, demande, message.key)
                if answered == "clore" and not reply.is_error:
                    await self._end_poll(tx, demande, message.key)
                text = reply.text
                if answered == "?" and message.author.via == "email":
                    # No !aide in a mailbox: the answer lists what may be written.
                    text += "\nCommandes possibles par courriel : " + ", ".join(
                        f"!{spec.name}" for spec in ROOM.specs if spec.name not in NOT_BY_EMAIL
                    )
                await self.email.command_answered(
                    tx,
                    demande,
                    author=message.author,
                    command=answered,
                    text=text,
                    error=reply.is_error,
                    key=message.key,
                )
            if message.text:
                # The sentence after an email's quick answer: to the others, no status.
                await self.email.room_message(
                    tx,
                    demande,
                    event_key=message.key,
                    author=message.author.agent,
                    author_id=message.author.address,
                    content=message.content,
                )
            return
        await self._free_message(ctx, message)

    async def _command(self, ctx: RoomCtx, line: str) -> Reply | None:
        parsed = ROOM.parse(line)
        if isinstance(parsed, NotACommand):
            return None
        if isinstance(parsed, ParseFailure):
            await ctx.audit("command_refused", command="?")
            return parsed.reply()
        name = parsed.spec.name
        try:
            async with ctx.tx.savepoint():
                result = await ROOM.dispatch(parsed, ctx)
        except CommandFailed as failed:
            cause = failed.__cause__
            if cause is not None and (database_unavailable(cause) or homeserver_outage(cause)):
                raise cause from failed
            await ctx.audit("command_failed", command=name, error=failed.reference)
            return failure_reply(failed.reference, rolled_back=True)
        assert isinstance(result, Reply)  # the room's set has no confirmations
        if name != "aide":
            # Refusals are audited too (never the message content).
            await ctx.audit(
                "command_refused" if result.is_error else f"command_{name}", command=name
            )
        return result

    async def _free_message(self, ctx: RoomCtx, message: ParticipantMessage) -> None:
        """Not a command: an instructeur's answer, or the aidant writing on a closed demande."""
        event: status_rules.Event | None = None
        if ctx.is_instructeur:
            event = status_rules.InstructeurAnswer()
        elif ctx.is_aidant_side and ctx.demande.status == Status.CLOTUREE:
            event = status_rules.AidantMessage()
        if event is not None:
            await self.apply(
                ctx.tx,
                ctx.demande,
                event,
                actor=message.author.address,
                txn=message.key,
                announce=True,
            )
        await self.email.room_message(
            ctx.tx,
            ctx.demande,
            event_key=message.key,
            author=message.author.agent,
            author_id=message.author.address,
            content=message.content,
        )

    async def _notice(self, tx: MailTx, demande: Demande, text: str, *, txn: str) -> None:
        await self.sender.enqueue(tx, txn_id=txn, room_id=_room(demande), content=mx.notice(text))

    async def _enqueue_dossier(self, tx: Tx, demande: Demande, *, txn: str, newcomer: str) -> None:
        current = await tx.get_demande(demande.id)
        content = await dossier_content(
            tx,
            demande,
            self.policies.current,
            status=current.status if current else demande.status,
            repost=True,
            ask=[newcomer],
        )
        await self.sender.enqueue(tx, txn_id=txn, room_id=_room(demande), content=content)

    # ------------------------------------------------------- status changes
    async def apply(
        self,
        tx: MailTx,
        demande: Demande,
        event: status_rules.Event,
        *,
        actor: str,
        txn: str,
        announce: bool,
        usefulness: Usefulness | None = None,
    ) -> status_rules.Transition | status_rules.Refusal:
        """Apply a status event in `tx`; `announce` posts the status notice in the room."""
        now = self.clock.now()
        current = await tx.get_demande(demande.id)
        assert current is not None
        result = status_rules.apply(current.status, current.times, event, now)
        if isinstance(result, status_rules.Transition) and result.changed:
            await tx.update_status(
                demande.id, result.status, result.times, usefulness=usefulness or current.usefulness
            )
            if result.status != current.status:
                await tx.audit(
                    f"status_{result.status.value}",
                    actor=actor,
                    reference=demande.reference,
                    details={"from": current.status.value},
                    now=now,
                )
                await self.email.status_changed(
                    tx, demande, old=current.status, new=result.status, actor=actor, key=txn
                )
                tx.after_commit(self.spaces.set)
            if result.notice and announce:
                await self._notice(tx, demande, result.notice, txn=f"status-{txn}")

        return result


CLOSE_NOTICE = "close.notice.{demande_id}"  # txn of the « traitée » notice (reactions)
CLOSE_POLL = "close.poll.{demande_id}"  # txn of the usefulness poll


def _event_type(event: Any) -> str | None:
    source = getattr(event, "source", None) or {}
    kind = source.get("type") if isinstance(source, Mapping) else None
    return kind if isinstance(kind, str) else None


def _room(demande: Demande) -> str:
    """The room of a demande that has one (every demande the room handlers see)."""
    assert demande.room_id is not None
    return demande.room_id
