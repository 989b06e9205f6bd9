"""Opening a demande: the aidant's direct chat with the bot, then the room, crash-safe.

The direct chat holds personal data (the form), so the bot only takes a form
that reached it encrypted. Once `!confirmer` is committed, the demande exists
in the database with its ledger of participants; the room is then built in
steps recorded in `creation_step`, each of which can be re-run after a crash
without a second room, a second invitation or a second dossier:

    pending ──createRoom──▶ room_created ──invites──▶ invited ──dossier──▶ ready

The only step the homeserver cannot make idempotent is createRoom. A bot killed
right after it, before recording the room ID, finds the room again on restart
through its `fr.aplus.demande` state event (see `_find_orphan_room`).

The aidant is told « ouverte » in the commit that makes the room ready, never before;
an attempt that ends without the room tells them once that the demande is recorded and
its room on the way. One demande that cannot be finished never holds back the others:
the recovery works demande by demande. An outage (homeserver unreachable, a 5xx) is
tried again every round, never counted; a refusal is recorded (`work_problems`), tried
again with a doubling delay (`CREATION_RETRY`), then reported once, in French, to the
aidant, the operators and the audit, and tried again hourly after that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from bot.commands.direct import AIDANT, DIRECT, DirectCtx, refusal
from bot.commands.framework import (
    CommandFailed,
    NotACommand,
    ParseFailure,
    Reply,
    failure_reply,
)
from bot.domain import dossier as texts
from bot.domain import drafting
from bot.domain import form as form_rules
from bot.domain.followup import FollowUpRules
from bot.domain.model import Agent, Demande
from bot.domain.retry import GiveUp, Retry, RetryPolicy, after_failure
from bot.faults import crash_point
from bot.matrix import content as mx
from bot.matrix.attachments import AttachmentError, file_content
from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.ports import EmailHooks, PoliciesRef, Sender
from bot.services.clock import Clock
from bot.services.dossier_view import dossier_content
from bot.services.draft_chat import DraftChat, draft_reference_key, file_line
from bot.services.failures import database_unavailable, describe, homeserver_outage
from bot.services.followup import NOTICE_ROOM_KEY
from bot.services.room_index import DemandeRoomIndex
from bot.services.room_specs import RoomSpecs
from bot.services.worker import Wakeup
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

DEMANDE_STATE_TYPE = "fr.aplus.demande"
OPENING_PROBLEM = "opening"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A text message the bot received, already decrypted when it was encrypted."""

    room_id: str
    event_id: str
    sender: str
    body: str
    encrypted: bool
    # The event's (decrypted) content, for what needs more than the body (email bridge).
    content: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, room_id: str, event: Any) -> Incoming:
        """From a nio text event (decrypted by nio when it was encrypted)."""
        return cls(
            room_id=room_id,
            event_id=event.event_id,
            sender=event.sender,
            body=event.body if isinstance(event.body, str) else "",
            encrypted=bool(getattr(event, "decrypted", False)),
            content=(getattr(event, "source", None) or {}).get("content") or {},
        )


# Tells the operators about a demande whose room cannot be built (the admin room).
OperatorAlert = Callable[[str, str], Awaitable[None]]


class Opening(DraftChat):
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        sender: Sender,
        clock: Clock,
        policies: PoliciesRef,
        specs: RoomSpecs,
        index: DemandeRoomIndex,
        email: EmailHooks,
        retry: RetryPolicy,
        alert_operators: OperatorAlert,
        followup_rules: FollowUpRules | None = None,
        client_url: str | None = None,
        spaces: Wakeup | None = None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.sender = sender
        self.clock = clock
        self.policies = policies
        self.specs = specs
        self.index = index
        self.email = email
        self.retry = retry
        self.alert_operators = alert_operators
        self.followup_rules = followup_rules or FollowUpRules()
        self.client_url = client_url
        self.spaces = spaces or Wakeup()  # a ready demande is listed in its groups' spaces

    @property
    def bot_user_id(self) -> str:
        return self.specs.bot_user_id

    # ---------------------------------------------------------- direct chat
    async def on_direct_message(self, msg: Incoming) -> None:
        """A message in a direct chat: a command, or maybe a form."""
        created: _Prepared | None = None
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(msg.event_id, msg.room_id, now):
                return
            agent = await tx.get_agent_by_matrix_id(msg.sender)
            if agent is not None and agent.active:
                # A directory agent wrote to the bot: their account is in use (inactivity),
                # recorded with what the message does rather than in a transaction of its own.
                await tx.touch_activity(agent.id, now)
            drafts = _Drafts(self, tx, agent, msg)
            ctx = await self._direct_ctx(tx, agent, msg, drafts)
            parsed = DIRECT.parse(msg.body)
            reply: Reply | None
            if isinstance(parsed, NotACommand):
                reply = await self._free_text(tx, ctx, msg)
            elif isinstance(parsed, ParseFailure):
                reply = parsed.reply()
            else:
                found = refusal(ctx) if parsed.spec.audience == AIDANT else None
                if found is not None:
                    await tx.audit(
                        found[0], actor=msg.sender, details={"command": parsed.spec.name}, now=now
                    )
                try:
                    async with tx.savepoint():
                        result = await DIRECT.dispatch(parsed, ctx)
                except CommandFailed as failed:
                    cause = failed.__cause__
                    if cause is not None and database_unavailable(cause):
                        raise cause from failed
                    result = failure_reply(failed.reference, rolled_back=True)
                    drafts.created = None  # rolled back with the savepoint
                assert isinstance(result, Reply)
                reply = result
                created = drafts.created
            # A demande just confirmed is answered by the room's building instead: «
            # ouverte » in the commit that makes it ready, « enregistrée, en cours de
            # création » if an attempt ends without it (never a promise of a room).
            if reply is not None and created is None:
                await self.sender.enqueue(
                    tx,
                    txn_id=f"reply-{msg.event_id}",
                    room_id=msg.room_id,
                    content=mx.notice(reply.text, reply.html),
                    recipients=[msg.sender],
                    encrypted=msg.encrypted,
                )
        if created is not None:
            try:
                await self._advance_or_record(created.demande.id, prepared=created)
            finally:
                self.sender.flush_soon(msg.room_id)

    async def _direct_ctx(
        self, tx: Tx, agent: Agent | None, msg: Incoming, drafts: _Drafts
    ) -> DirectCtx:
        # The follow-up room is the agent's too, but not where their usagers' names
        # are searched: only their own direct chat with the bot is.
        notices_room = (
            await tx.get_state(NOTICE_ROOM_KEY.format(agent_id=agent.id)) if agent else None
        )
        return DirectCtx(
            agent=agent,
            encrypted=msg.encrypted,
            drafts=drafts,
            tx=tx,
            policies=self.policies.current,
            rules=self.followup_rules,
            now=self.clock.now(),
            private=msg.encrypted and notices_room != msg.room_id,
            client_url=self.client_url,
            has_draft=agent is not None and await drafts.in_preparation(),
        )

    async def on_direct_file(self, msg: Incoming) -> None:
        """A file sent in the direct chat: kept (sealed) with the draft in preparation,
        posted in the demande's room at `!confirmer`; with no draft, the aidant is told."""
        async with self.store.transaction() as tx:
            agent = await tx.get_agent_by_matrix_id(msg.sender)
            ctx = await self._direct_ctx(tx, agent, msg, _Drafts(self, tx, agent, msg))
            found = refusal(ctx)
            current = (
                await tx.draft_input(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
                if agent is not None and found is None
                else None
            )
        data: bytes | None = None
        problem: str | None = None
        if found is None and current is not None:
            try:
                filename, mimetype, data = await self.gateway.fetch_attachment(msg.content)
            except AttachmentError as exc:
                problem = str(exc)
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(msg.event_id, msg.room_id, now):
                return
            if found is not None:
                await tx.audit(found[0], actor=msg.sender, details={"command": "fichier"}, now=now)
                text = found[1]
            elif current is None:
                text = drafting.FILE_WITHOUT_DRAFT
            elif problem is not None or data is None:
                text = problem or drafting.FILE_WITHOUT_DRAFT
            else:
                added = await tx.add_draft_file(
                    current.id, filename=filename, mimetype=mimetype, data=data, now=now
                )
                count = len(await tx.draft_files(current.id))
                await tx.audit(
                    "draft_file_kept", actor=msg.sender, details={"size": added.size}, now=now
                )
                text = drafting.file_kept(file_line(added), count)
            await self.sender.enqueue(
                tx,
                txn_id=f"reply-{msg.event_id}",
                room_id=msg.room_id,
                content=mx.notice(text),
                recipients=[msg.sender],
                encrypted=msg.encrypted,
            )
        self.sender.flush_soon(msg.room_id)

    async def _free_text(self, tx: Tx, ctx: DirectCtx, msg: Incoming) -> Reply:
        """Not a command: a form, if it is one (only an aidant's, only encrypted)."""
        found = refusal(ctx)
        if found is not None:
            await tx.audit(
                found[0], actor=msg.sender, details={"command": "formulaire"}, now=self.clock.now()
            )
            return Reply.error(found[1])
        assert ctx.agent is not None
        return await self._take_form(tx, ctx.agent, msg)

    async def confirm(self, tx: Tx, agent: Agent, msg: Incoming) -> tuple[Reply, _Prepared | None]:
        now = self.clock.now()
        draft = await tx.pending_draft(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        current = await tx.draft_input(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        if draft is None and current is not None:
            assessment = await self._assess(tx, current.fields)
            shown = drafting.not_complete(assessment.problems)
            return Reply(shown.body, shown.formatted_body), None
        if draft is None:
            last = await tx.last_draft(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
            if last is not None and last.state == "confirmed" and last.demande_id is not None:
                demande = await tx.get_demande(last.demande_id)
                return Reply(
                    texts.already_confirmed(
                        demande.reference if demande else "?",
                        opened=demande is not None and demande.creation_step == "ready",
                    )
                ), None
            return Reply(texts.NOTHING_TO_CONFIRM), None
        # The directory may have changed since the recap: route again, refuse if it broke.
        routing = self._route(draft.form, await tx.list_groups(), await tx.list_agents())
        if routing.errors:
            # The recap no longer holds: say what to change, in the draft's own terms.
            await tx.set_draft_state(draft.id, "cancelled", now=now)
            problems = list((await self._assess(tx, current.fields)).problems) if current else []
            if not problems:
                problems = [
                    form_rules.Problem(form_rules.ORGANISMES, e[:1].upper() + e[1:] + ".")
                    for e in routing.errors
                ]
            shown = drafting.not_complete(problems)
            return Reply(shown.body, shown.formatted_body), None
        reference = await tx.get_state(draft_reference_key(draft.id)) or await tx.next_reference(
            now.year
        )
        demande = await tx.create_demande(
            reference=reference,
            form=draft.form,
            aidant_agent_id=agent.id,
            group_ids=[g.id for g in routing.groups],
            draft_id=draft.id,
            now=now,
        )
        routed = (*routing.matrix_instructeurs, *routing.email_instructeurs)
        await tx.add_first_participants(
            demande_id=demande.id,
            entries=[
                (agent, "aidant", msg.sender),
                *((instructeur, "instructeur", self.bot_user_id) for instructeur in routed),
            ],
            now=now,
        )
        await tx.set_draft_state(draft.id, "confirmed", demande_id=demande.id, now=now)
        files = 0
        if current is not None:
            # The files go with the demande (posted in its room once it is ready).
            files = await tx.hand_draft_files_to(current.id, demande.id)
            await tx.drop_draft_input(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        await tx.audit("demande_opened", actor=msg.sender, reference=reference, now=now)
        await tx.audit(
            "mandate_recorded",
            actor=msg.sender,
            reference=reference,
            details={
                "type": draft.form.mandat.type.value,
                "date": draft.form.mandat.date.isoformat(),
            },
            now=now,
        )
        for skipped, why in routing.skipped:
            await tx.audit(
                "routing_skipped",
                actor=self.bot_user_id,
                reference=reference,
                details={"agent": skipped.id, "why": why},
                now=now,
            )
        # Not sent (see `on_direct_message`): the room's building tells the aidant.
        # What the room needs, marked in this same commit: the opening that follows goes
        # straight to createRoom, without a transaction of its own first. The ledger is
        # the participants just added (a new demande has no other).
        ledger = {a.matrix_id for a in (agent, *routed) if a.matrix_id}
        prepared = await self._prepare(tx, demande, ledger=ledger, files=files > 0)
        return Reply(texts.demande_recorded(reference)), prepared

    async def cancel(self, tx: Tx, agent: Agent, msg: Incoming) -> Reply:
        now = self.clock.now()
        draft = await tx.pending_draft(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        current = await tx.draft_input(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        if draft is None and current is None:
            return Reply(texts.NOTHING_TO_CANCEL)
        if draft is not None:
            await tx.set_draft_state(draft.id, "cancelled", now=now)
        files = await tx.drop_draft_input(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        await tx.audit("draft_cancelled", actor=msg.sender, details={"files": files}, now=now)
        return Reply(texts.CANCELLED)

    # ------------------------------------------------------------- the room
    async def resume_all(self) -> None:
        """After a restart, and every minute: finish every demande whose room is not ready,
        each on its own (one that fails is recorded and retried later, never fatal)."""
        async with self.store.transaction() as tx:
            pending = await tx.demandes_in_creation()
            problems = {p.key: p for p in await tx.work_problems(OPENING_PROBLEM)}
            with_files = [
                d
                for d in [await tx.get_demande(i) for i in await tx.demandes_with_files_to_post()]
                if d is not None and d.creation_step == "ready"
            ]
        for ready in with_files:
            # A stop between the dossier and the files: they go now.
            try:
                await self._post_files(ready)
            except Exception as exc:
                if database_unavailable(exc):
                    raise
                log.warning("demande %s: files not posted yet: %s", ready.reference, describe(exc))
        now = self.clock.now()
        for demande in pending:
            problem = problems.get(str(demande.id))
            if problem is not None and problem.next_attempt_at > now:
                continue
            await self._advance_or_record(demande.id, recovering=True)

    async def _advance_or_record(
        self, demande_id: int, *, recovering: bool = False, prepared: _Prepared | None = None
    ) -> None:
        """Build the room; an outage is left for the next round, anything else counted.

        Either way the aidant, if the attempt ends without the room, is told once that
        the demande is recorded and its room on the way (« ouverte » comes with the room).
        """
        try:
            await self.advance(demande_id, recovering=recovering, prepared=prepared)
        except Exception as exc:
            if database_unavailable(exc):
                raise
            if creation_outage(exc):
                # Committed: the room is finished by the recovery once the homeserver is back.
                log.warning("demande %d: room not finished yet: %s", demande_id, exc)
                async with self.store.transaction() as tx:
                    demande = await tx.get_demande(demande_id)
                    if demande is not None:
                        await self._tell_recorded(tx, demande)
                return
            await self._opening_problem(demande_id, exc)
            return
        async with self.store.transaction() as tx:
            problem = await tx.work_problem(OPENING_PROBLEM, str(demande_id))
            solved = await tx.work_problem_resolved(
                OPENING_PROBLEM, str(demande_id), self.clock.now()
            )
            demande = await tx.get_demande(demande_id)
        if solved:
            log.info("demande %d: its room is finished after all", demande_id)
        if problem is not None and problem.notified_at is not None and demande is not None:
            # The operators were told it had failed for good: tell them it is over.
            await self.alert_operators(
                f"opening-solved-{demande.reference}", texts.opening_solved_alert(demande.reference)
            )

    async def _opening_problem(self, demande_id: int, exc: Exception) -> None:
        """A refused createRoom: counted, tried again with a doubling delay; past the
        budget, reported for good and tried again only hourly, silently (the cause, a
        directory entry or a policy, may be fixed). A failure of our own (the room's body
        cannot be built from the demande's data) would fail the same way: reported at once.
        """
        now = self.clock.now()
        log.error("demande %d: its room cannot be built (%s)", demande_id, describe(exc),
                  exc_info=exc)  # fmt: skip
        alert: tuple[str, str] | None = None
        async with self.store.transaction() as tx:
            demande = await tx.get_demande(demande_id)
            if demande is not None and demande.creation_step == "ready":
                # Its files failed, after the room was finished: `resume_all` posts them.
                return
            current = await tx.work_problem(OPENING_PROBLEM, str(demande_id))
            attempts = current.attempts if current else 0
            outcome = after_failure(self.retry, attempts, now, outage=False)
            spent = isinstance(outcome, GiveUp) or not isinstance(exc, MatrixError)
            next_at = outcome.at if isinstance(outcome, Retry) else now + _longest(self.retry)
            problem = await tx.record_work_problem(
                OPENING_PROBLEM,
                str(demande_id),
                error=describe(exc),
                attempts=attempts + 1,
                next_at=next_at,
                now=now,
            )
            if demande is None:
                return
            if current is None:
                await tx.audit(
                    "demande_opening_problem",
                    actor=self.bot_user_id,
                    reference=demande.reference,
                    details={"error": describe(exc)},
                    now=now,
                )
                if not spent:  # reported at once: that message says it is recorded
                    await self._tell_recorded(tx, demande)
            if spent and problem.notified_at is None:
                await tx.audit(
                    "demande_opening_given_up",
                    actor=self.bot_user_id,
                    reference=demande.reference,
                    details={"error": describe(exc), "attempts": problem.attempts},
                    now=now,
                )
                await self._tell_aidant(
                    tx,
                    demande,
                    f"opening-problem-{demande.reference}",
                    texts.opening_problem(demande.reference, room_made=demande.room_id is not None),
                )
                await tx.work_problem_notified(OPENING_PROBLEM, str(demande_id), now)
                alert = (
                    f"opening-problem-{demande.reference}",
                    texts.opening_given_up_alert(
                        demande.reference, problem.attempts, describe(exc)
                    ),
                )
        if alert is not None:
            await self.alert_operators(*alert)

    async def _tell_recorded(self, tx: Tx, demande: Demande) -> None:
        """Once per demande: recorded, its room on the way (an attempt ended without it)."""
        if demande.creation_step != "ready":
            await self._tell_aidant(
                tx,
                demande,
                f"opening-recorded-{demande.reference}",
                texts.demande_recorded(demande.reference),
            )

    async def _tell_aidant(self, tx: Tx, demande: Demande, txn_id: str, text: str) -> None:
        """A notice in the direct chat where the demande was confirmed (idempotent)."""
        draft_room = await self._draft_room(tx, demande)
        aidant = await tx.get_agent(demande.aidant_agent_id)
        if draft_room is not None and aidant is not None and aidant.matrix_id:
            await self.sender.enqueue(
                tx,
                txn_id=txn_id,
                room_id=draft_room,
                content=mx.notice(text),
                recipients=[aidant.matrix_id],
            )

    @staticmethod
    async def _draft_room(tx: Tx, demande: Demande) -> str | None:
        if demande.draft_id is None:
            return None
        found = await tx.draft_room(demande.draft_id)
        return found[0] if found else None

    async def _prepare(
        self,
        tx: Tx,
        demande: Demande,
        *,
        mark: bool = True,
        ledger: set[str] | None = None,
        files: bool = True,
    ) -> _Prepared:
        """The room's invitees from the ledger (read, unless given); with `mark`, recorded
        in `tx` that createRoom is about to be sent (a first attempt: a bot killed while
        the request is in flight then waits for that room on restart rather than make a
        second one). `files`: False when the demande is known to have none to post."""
        if ledger is None:
            ledger = {p.matrix_id for p in await tx.participants(demande.id) if p.matrix_id}
        users = sorted(ledger)
        # An account on a homeserver outside the room's ACL could never take part
        # (data of an older version, a policy changed since): left out, and told.
        invitees = [user for user in users if self.specs.may_take_part(user)]
        left_out = [user for user in users if user not in invitees]
        marked = mark and demande.creation_step == "pending"
        if marked:
            await self._mark_creating(tx, demande)
        return _Prepared(demande, invitees, left_out, marked, files)

    async def advance(
        self, demande_id: int, *, recovering: bool = False, prepared: _Prepared | None = None
    ) -> Demande:
        """Take the demande's room one step at a time to `ready`. `prepared`: what
        `!confirmer` read and marked in its own commit (the hot path)."""
        if prepared is None:
            async with self.store.transaction() as tx:
                demande = await tx.get_demande(demande_id)
                assert demande is not None
                # A first attempt records that createRoom is about to be sent in the same
                # transaction; a recovery must first look for the room of an earlier attempt.
                prepared = await self._prepare(tx, demande, mark=not recovering)
        demande = prepared.demande
        invitees, left_out, marked = prepared.invitees, prepared.left_out, prepared.marked
        fresh = False
        dossier: dict[str, Any] = {}
        recipients = {*invitees, self.bot_user_id}
        if demande.creation_step == "pending":
            room_id = await self._find_orphan_room(demande) if recovering else None
            if room_id is None:
                if not marked:
                    async with self.store.transaction() as tx:
                        await self._mark_creating(tx, demande)
                # The dossier is read and rendered while createRoom is in flight (the
                # demande does not change meanwhile: its room does not exist yet).
                reading = asyncio.ensure_future(self._read_dossier(demande))
                try:
                    room_id = await self._create_room(demande, invitees)
                except Exception as exc:
                    await asyncio.gather(reading, return_exceptions=True)
                    if not creation_outage(exc) and not database_unavailable(exc):
                        # Answered (or never sent): no request left in flight, so the next
                        # attempt looks for a room of this one once, without waiting.
                        async with self.store.transaction() as tx:
                            await tx.set_state(_creating_key(demande.id), CREATE_ROOM_ANSWERED)
                    raise
                except BaseException:
                    await asyncio.gather(reading, return_exceptions=True)
                    raise
                dossier = await reading
                # The invitations were in the createRoom body, which the homeserver
                # performs within the request: its 200 means every one was sent, so the
                # room is recorded as "invited", with its dossier queued in the same
                # commit. A room found again after a crash has them checked one by one.
                fresh = True
            crash_point("after_create_room")
            self.index.add(room_id)
            # On the hot path the room key goes to the invitees' devices while the room
            # is recorded: the two do not depend on each other, and the dossier is
            # encrypted only once both are done (a key shared for a room whose record a
            # crash lost is unused: the recovery finds the room and sends its dossier).
            sharing = (
                asyncio.ensure_future(self.gateway.share_room_key(room_id, recipients))
                if fresh
                else None
            )
            try:
                async with self.store.transaction() as tx:
                    await tx.set_creation_step(
                        demande.id, "invited" if fresh else "room_created", room_id=room_id
                    )
                    await tx.audit(
                        "room_created",
                        actor=self.bot_user_id,
                        reference=demande.reference,
                        details={"room_id": room_id},
                        now=self.clock.now(),
                    )
                    demande = replace(
                        demande, creation_step="invited" if fresh else "room_created",
                        room_id=room_id,
                    )  # fmt: skip
                    for user in left_out:
                        await self._left_out(tx, demande, user)
                    if fresh:
                        await self._enqueue_dossier(tx, demande, dossier)
            except BaseException:
                if sharing is not None:
                    await asyncio.gather(sharing, return_exceptions=True)
                raise
            if sharing is not None:
                await sharing
            if fresh:
                crash_point("after_invites")
        if demande.creation_step == "room_created":
            await self._ensure_invites(demande, invitees)
            crash_point("after_invites")
            async with self.store.transaction() as tx:
                await tx.set_creation_step(demande.id, "invited")
                demande = await tx.get_demande(demande_id)
            assert demande is not None
        if demande.creation_step == "invited":
            sent: str | None = None
            if fresh:
                # The hot path: the room was just made with exactly the ledger's members,
                # so the dossier goes straight out (same stable transaction ID as its
                # outbox row, which a crash here leaves for the outbox worker).
                assert demande.room_id is not None
                sent = await self.gateway.send_encrypted(
                    demande.room_id, dossier, dossier_txn(demande.reference), recipients=recipients
                )
            async with self.store.transaction() as tx:
                if sent is None:
                    await self._enqueue_dossier(tx, demande)
                else:
                    await tx.mark_message_sent(
                        dossier_txn(demande.reference), sent, now=self.clock.now()
                    )
                event_id = sent or await tx.message_event_id(dossier_txn(demande.reference))
                await tx.set_creation_step(demande.id, "ready", dossier_event_id=event_id)
                # The room exists and the invitations went: now « ouverte » is true.
                await self._tell_aidant(
                    tx,
                    demande,
                    f"opening-opened-{demande.reference}",
                    texts.demande_opened(demande.reference),
                )
                tx.after_commit(self.spaces.set)
                demande = replace(demande, creation_step="ready", dossier_event_id=event_id)
                await self.email.demande_ready(tx, demande)
        if demande.creation_step == "ready":
            crash_point("before_draft_files")
            if prepared.files:
                await self._post_files(demande)
        return demande

    async def _post_files(self, demande: Demande) -> None:
        """The files sent with the draft, after the dossier: each uploaded encrypted and
        queued in the room exactly once (its row goes in the same commit)."""
        async with self.store.transaction() as tx:
            pending = await tx.files_to_post(demande.id)
        for file, data in pending:
            assert demande.room_id is not None
            encrypted_file = await self.gateway.upload_attachment(data, "fichier")
            crash_point("after_draft_file_upload")
            content = file_content(
                encrypted_file, filename=file.filename, mimetype=file.mimetype, size=file.size
            )
            content["m.mentions"] = {}  # information: it asks nobody to act
            async with self.store.transaction() as tx:
                await self.sender.enqueue(
                    tx,
                    txn_id=f"draft-file-{demande.reference}-{file.id}",
                    room_id=demande.room_id,
                    content=content,
                )
                await tx.draft_file_posted(file.id)
                await tx.audit(
                    "draft_file_posted",
                    actor=self.bot_user_id,
                    reference=demande.reference,
                    details={"size": file.size},
                    now=self.clock.now(),
                )
        if pending and demande.room_id is not None:
            self.sender.flush_soon(demande.room_id)

    async def _left_out(self, tx: Tx, demande: Demande, user: str) -> None:
        assert demande.room_id is not None
        await tx.audit(
            "invite_impossible",
            actor=self.bot_user_id,
            reference=demande.reference,
            details={"user": user, "why": "server_not_allowed"},
            now=self.clock.now(),
        )
        await self.sender.enqueue(
            tx,
            txn_id=f"invite-impossible-{demande.reference}-{user}",
            room_id=demande.room_id,
            content=mx.notice(texts.invite_failed(user, server_refused=True)),
        )

    async def _mark_creating(self, tx: Tx, demande: Demande) -> None:
        # Recorded before the request: a bot killed while createRoom is in flight knows,
        # on restart, to wait for that room rather than make a second one (the homeserver
        # finishes the request without us).
        await tx.set_state(_creating_key(demande.id), self.clock.now().isoformat())

    async def _create_room(self, demande: Demande, invitees: list[str]) -> str:
        room_id = await self.gateway.create_room(self.specs.body(demande, invitees))
        self.gateway.track_new_room(room_id, invited=invitees)
        log.info("demande %s: room %s created", demande.reference, room_id)
        return room_id

    async def _find_orphan_room(self, demande: Demande) -> str | None:
        """The room of a demande whose createRoom was sent but never recorded, if any.

        If a createRoom was in flight when the bot stopped, the homeserver may still be
        creating the room: keep looking for a bounded time before concluding it does not
        exist (a second room would be worse than a few seconds' wait at start-up).
        """
        async with self.store.transaction() as tx:
            attempted = await tx.get_state(_creating_key(demande.id))
        if attempted is None:
            return None
        if attempted == CREATE_ROOM_ANSWERED:
            # Refused: the homeserver may still have made the room before refusing an
            # invitation, but it had finished with it when it answered.
            return await self._search_rooms_for(demande)
        deadline = asyncio.get_running_loop().time() + ORPHAN_SEARCH_SECONDS
        while True:
            room_id = await self._search_rooms_for(demande)
            if room_id is not None or asyncio.get_running_loop().time() >= deadline:
                return room_id
            await asyncio.sleep(0.5)

    async def _search_rooms_for(self, demande: Demande) -> str | None:
        async with self.store.transaction() as tx:
            known = await tx.known_room_ids()
        for room_id in await self.gateway.joined_rooms():
            if room_id in known:
                continue
            state = await self.gateway.state_event(room_id, DEMANDE_STATE_TYPE)
            if state and state.get("reference") == demande.reference:
                log.info("demande %s: found its room %s again", demande.reference, room_id)
                return room_id
        return None

    async def _ensure_invites(self, demande: Demande, invitees: list[str]) -> None:
        """A room found again after a crash: its invitations are queued, and sent now."""
        assert demande.room_id is not None
        # One membership read, which also rebuilds our view of the room for the dossier.
        present = set((await self.gateway.refresh_members(demande.room_id)).users)
        now = self.clock.now()
        async with self.store.transaction() as tx:
            for user in invitees:
                if user not in present:
                    await tx.add_pending_invite(demande.room_id, user, now)
        # The guard's worker would send them too; sending now keeps the opening short.
        for user in invitees:
            if user in present:
                continue
            try:
                await self.gateway.invite(demande.room_id, user)
            except MatrixError as exc:
                if homeserver_outage(exc):
                    raise
                # Left queued: the guard retries it, and reports it if it never goes.
                log.warning("demande %s: invite refused: %s", demande.reference, exc.errcode)
                continue
            async with self.store.transaction() as tx:
                await tx.invite_done(demande.room_id, user)
                await tx.audit(
                    "invited",
                    actor=self.bot_user_id,
                    reference=demande.reference,
                    details={"user": user},
                    now=now,
                )

    async def _enqueue_dossier(
        self, tx: Tx, demande: Demande, content: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Queue the dossier (`content`: already rendered) and return its content;
        idempotent (a second call keeps the first)."""
        assert demande.room_id is not None
        if content is None:
            content = await self._dossier_content(tx, demande)
        await self.sender.enqueue(
            tx, txn_id=dossier_txn(demande.reference), room_id=demande.room_id, content=content
        )
        return content

    async def _read_dossier(self, demande: Demande) -> dict[str, Any]:
        async with self.store.transaction() as tx:
            return await self._dossier_content(tx, demande)

    async def _dossier_content(self, tx: Tx, demande: Demande) -> dict[str, Any]:
        # The routed instructeurs are the ones asked to act on a new demande.
        instructeurs = [
            p.matrix_id
            for p in await tx.participants(demande.id)
            if p.matrix_id and p.kind == "instructeur"
        ]
        return await dossier_content(
            tx,
            demande,
            self.policies.current,
            status=demande.status,
            repost=False,
            ask=instructeurs,
        )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A demande about to get its room: its invitees (and the accounts left out), read
    from its ledger; `marked`: "createRoom about to be sent" is recorded."""

    demande: Demande
    invitees: list[str]
    left_out: list[str]
    marked: bool
    files: bool = True


class _Drafts:
    """`DraftOps` for one direct message: what `!confirmer` and `!annuler` act on."""

    def __init__(self, opening: Opening, tx: Tx, agent: Agent | None, msg: Incoming) -> None:
        self._opening = opening
        self._tx = tx
        self._agent = agent
        self._msg = msg
        self.created: _Prepared | None = None

    async def confirm(self) -> Reply:
        assert self._agent is not None  # the command's audience is the aidant
        reply, self.created = await self._opening.confirm(self._tx, self._agent, self._msg)
        return reply

    async def cancel(self) -> Reply:
        assert self._agent is not None
        return await self._opening.cancel(self._tx, self._agent, self._msg)

    async def show(self) -> Reply:
        assert self._agent is not None
        return await self._opening.show_draft(self._tx, self._agent, self._msg)

    async def in_preparation(self) -> bool:
        assert self._agent is not None
        found = await self._tx.draft_input(
            aidant_agent_id=self._agent.id, dm_room_id=self._msg.room_id
        )
        return found is not None

    async def guide(self) -> Reply:
        assert self._agent is not None
        return await self._opening.start_guided(self._tx, self._agent, self._msg)

    async def organisations(self, departement: str) -> Reply:
        return await self._opening.organisations_in(self._tx, departement)


# How long a restarted bot looks for a room whose creation it had requested.
ORPHAN_SEARCH_SECONDS = 10.0
# The createRoom marker once the homeserver has answered it (refused): nothing in flight.
CREATE_ROOM_ANSWERED = "answered"

# A refused createRoom: tried again after 30 s, 1 min, 2 min, then reported for good and
# tried again hourly (`_opening_problem`).
CREATION_RETRY = RetryPolicy(attempts=4, base_seconds=30.0, cap_seconds=3600.0)


def creation_outage(exc: BaseException) -> bool:
    """The homeserver could not answer (down, overloaded, a 5xx, the guard unanswered):
    the attempt is not counted, the room is made once it is back."""
    return homeserver_outage(exc) or (isinstance(exc, MatrixError) and exc.transient)


def _longest(policy: RetryPolicy) -> timedelta:
    return timedelta(seconds=policy.cap_seconds)


def _creating_key(demande_id: int) -> str:
    return f"demande.{demande_id}.create_room_sent_at"


def dossier_txn(reference: str) -> str:
    return f"dossier-{reference}"
