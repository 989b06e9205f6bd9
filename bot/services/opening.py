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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.commands import direct as direct_commands
from bot.commands.direct import DirectParsed
from bot.domain import dossier as texts
from bot.domain import form as form_rules
from bot.domain import room_spec
from bot.domain.model import Agent, Demande, DemandeForm, Role
from bot.domain.policies import Policies
from bot.domain.reference import room_name
from bot.domain.routing import route
from bot.faults import crash_point
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.matrix.gateway import MatrixGateway
from bot.services import outbox
from bot.services.clock import Clock
from bot.services.directory_view import dossier_content, view_of
from bot.store.db import Store

log = logging.getLogger(__name__)

DEMANDE_STATE_TYPE = "fr.aplus.demande"


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


class Opening:
    def __init__(
        self,
        *,
        store: Store,
        gateway: MatrixGateway,
        outbox_: outbox.Outbox,
        policies: Policies,
        clock: Clock,
        bot_user_id: str,
        allowed_servers: Sequence[str],
        room_version: str,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.outbox = outbox_
        self.policies = policies
        self.clock = clock
        self.bot_user_id = bot_user_id
        self.allowed_servers = tuple(allowed_servers)
        self.room_version = room_version
        # Rooms of demandes; this service is the only one that records a room.
        self._demande_rooms: set[str] = set()
        self.email: Any = None  # bridge.outbound.EmailBridge when the email bridge is on

    # ------------------------------------------------------- the room index
    async def load_room_index(self) -> None:
        """Every room recorded for a demande, kept in memory: the dispatcher asks for each
        event, and the answer is almost always "no" (direct chats) — no query needed."""
        async with self.store.transaction() as tx:
            self._demande_rooms = set(await tx.known_room_ids())

    def is_demande_room(self, room_id: str) -> bool:
        return room_id in self._demande_rooms

    # ---------------------------------------------------------- direct chat
    async def on_direct_message(self, msg: Incoming, parsed: DirectParsed) -> None:
        """A message in a direct chat: a command (`parsed.command`) or maybe a form."""
        command = parsed.command
        created: int | None = None
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(msg.event_id, msg.room_id, now):
                return
            agent = await tx.get_agent_by_matrix_id(msg.sender)

            async def reply(text: str, html: str | None = None) -> None:
                await outbox.enqueue(
                    tx,
                    txn_id=f"reply-{msg.event_id}",
                    room_id=msg.room_id,
                    content=mx.notice(text, html),
                    now=now,
                    recipients=[msg.sender],
                    encrypted=msg.encrypted,
                )

            if command == "aide":
                help_ = direct_commands.help_reply(parsed.help_topic)
                await reply(help_.text, help_.html)
            elif parsed.error is not None:
                await reply(parsed.error.text, parsed.error.html)
            elif agent is None or not agent.active or not agent.has(Role.AIDANT):
                await tx.audit(
                    "demande_refused_not_aidant",
                    actor=msg.sender,
                    details={"command": command or "formulaire"},
                    now=now,
                )
                await reply(texts.REFUSAL_NOT_AIDANT)
            elif command in (None, "demande", "confirmer") and not msg.encrypted:
                # Personal data must never travel in clear, not even once.
                await tx.audit("form_refused_unencrypted", actor=msg.sender, now=now)
                await reply(texts.REFUSAL_UNENCRYPTED_ROOM)
            elif command == "demande":
                template = texts.render_form_template()
                await reply(template.body, template.formatted_body)
            elif command == "annuler":
                draft = await tx.pending_draft(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
                if draft is None:
                    await reply(texts.NOTHING_TO_CANCEL)
                else:
                    await tx.set_draft_state(draft.id, "cancelled", now=now)
                    await tx.audit("draft_cancelled", actor=msg.sender, now=now)
                    await reply(texts.CANCELLED)
            elif command == "confirmer":
                created = await self._confirm(tx, agent, msg, reply)
            elif command is None:
                await self._take_form(tx, agent, msg, reply)
        if created is not None:
            try:
                await self.advance(created)
            except MatrixError as exc:
                # Committed: the room is finished by the recovery job once the homeserver is back.
                log.warning("demande %d: room not finished yet: %s", created, exc)
        await self._flush(msg.room_id)

    async def _take_form(self, tx, agent: Agent, msg: Incoming, reply) -> None:  # type: ignore[no-untyped-def]
        now = self.clock.now()
        result = form_rules.parse_form(
            msg.body,
            today=now.date(),
            known_departements=self.policies.departements.keys(),
            organisation_lookup=self._organisation_id,
            categories=self.policies.categories.keys(),
        )
        if isinstance(result, form_rules.NotAForm):
            await reply(NOT_A_FORM)
            return
        if isinstance(result, form_rules.FormErrors):
            errors = texts.render_form_errors(result)
            await reply(errors.body, errors.formatted_body)
            return
        form: DemandeForm = result
        groups = await tx.list_groups()
        agents = await tx.list_agents()
        routing = route(
            form.territoire, form.organisations, form.categorie, groups, agents, self.policies
        )
        if routing.errors:
            errors = texts.render_form_errors(form_rules.FormErrors(routing.errors))
            await reply(errors.body, errors.formatted_body)
            return
        draft = await tx.save_draft(
            aidant_agent_id=agent.id,
            dm_room_id=msg.room_id,
            form=form,
            group_ids=[g.id for g in routing.groups],
            now=now,
        )
        groups_by_id = {g.id: g for g in groups}
        # The reference is given with the recap (as Administration+ does) and kept for
        # `!confirmer`; a cancelled draft leaves a gap in the sequence, never a reuse.
        reference = await tx.next_reference(now.year)
        await tx.set_state(_draft_reference_key(draft.id), reference)
        recap = texts.render_recap(
            reference,
            form,
            [g.name for g in routing.groups],
            [
                view_of(a, groups_by_id.get(a.group_id or -1), self.policies)
                for a in routing.matrix_instructeurs
            ],
            [
                view_of(a, groups_by_id.get(a.group_id or -1), self.policies)
                for a in routing.email_instructeurs
            ],
            organisation_names=self._org_names(),
        )
        await tx.audit("draft_saved", actor=msg.sender, details={"draft": draft.id}, now=now)
        await reply(recap.body, recap.formatted_body)

    def _org_names(self) -> dict[str, str]:
        return {k: v.name for k, v in self.policies.organisations.items()}

    def _organisation_id(self, text: str) -> str | None:
        org = self.policies.find_organisation(text)
        return org.id if org is not None else None

    async def _confirm(self, tx, agent: Agent, msg: Incoming, reply) -> int | None:  # type: ignore[no-untyped-def]
        now = self.clock.now()
        draft = await tx.pending_draft(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
        if draft is None:
            last = await tx.last_draft(aidant_agent_id=agent.id, dm_room_id=msg.room_id)
            if last is not None and last.state == "confirmed" and last.demande_id is not None:
                demande = await tx.get_demande(last.demande_id)
                await reply(already_confirmed(demande.reference if demande else "?"))
            else:
                await reply(texts.NOTHING_TO_CONFIRM)
            return None
        # The directory may have changed since the recap: route again, refuse if it broke.
        routing = route(
            draft.form.territoire,
            draft.form.organisations,
            draft.form.categorie,
            await tx.list_groups(),
            await tx.list_agents(),
            self.policies,
        )
        if routing.errors:
            errors = texts.render_form_errors(form_rules.FormErrors(routing.errors))
            await reply(errors.body, errors.formatted_body)
            return None
        reference = await tx.get_state(_draft_reference_key(draft.id)) or await tx.next_reference(
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
        await tx.add_participant(
            demande_id=demande.id, agent=agent, kind="aidant", added_by=msg.sender, now=now
        )
        for instructeur in (*routing.matrix_instructeurs, *routing.email_instructeurs):
            await tx.add_participant(
                demande_id=demande.id,
                agent=instructeur,
                kind="instructeur",
                added_by=self.bot_user_id,
                now=now,
            )
        await tx.set_draft_state(draft.id, "confirmed", demande_id=demande.id, now=now)
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
        await reply(texts.demande_opened(reference))
        return int(demande.id)

    # ------------------------------------------------------------- the room
    async def resume_all(self) -> None:
        """After a restart: finish every demande whose room is not ready yet."""
        async with self.store.transaction() as tx:
            pending = await tx.demandes_in_creation()
        for demande in pending:
            try:
                await self.advance(demande.id, recovering=True)
            except MatrixError as exc:
                log.warning("demande %s not finished yet: %s", demande.reference, exc)

    async def advance(self, demande_id: int, *, recovering: bool = False) -> Demande:
        async with self.store.transaction() as tx:
            demande = await tx.get_demande(demande_id)
            assert demande is not None
            invitees = _matrix_ids(await tx.participants(demande_id))
            # A first attempt records that createRoom is about to be sent in the same
            # transaction; a recovery must first look for the room of an earlier attempt.
            marked = demande.creation_step == "pending" and not recovering
            if marked:
                await self._mark_creating(tx, demande)
        fresh = False
        dossier: dict[str, Any] = {}
        if demande.creation_step == "pending":
            room_id = await self._find_orphan_room(demande) if recovering else None
            if room_id is None:
                if not marked:
                    async with self.store.transaction() as tx:
                        await self._mark_creating(tx, demande)
                room_id = await self._create_room(demande, invitees)
                # The invitations were in the createRoom body, which the homeserver
                # performs within the request: its 200 means every one was sent, so the
                # room is recorded as "invited", with its dossier queued in the same
                # commit. A room found again after a crash has them checked one by one.
                fresh = True
            crash_point("after_create_room")
            self._demande_rooms.add(room_id)
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
                demande = await tx.get_demande(demande_id)
                assert demande is not None
                if fresh:
                    dossier = await self._enqueue_dossier(tx, demande)
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
                    demande.room_id,
                    dossier,
                    dossier_txn(demande.reference),
                    recipients={*invitees, self.bot_user_id},
                )
            else:
                await self._post_dossier(demande)
            async with self.store.transaction() as tx:
                if sent is not None:
                    await tx.mark_message_sent(
                        dossier_txn(demande.reference), sent, now=self.clock.now()
                    )
                event_id = sent or await tx.message_event_id(dossier_txn(demande.reference))
                await tx.set_creation_step(demande.id, "ready", dossier_event_id=event_id)
                if self.email is not None:
                    await self.email.on_demande_ready(tx, demande)
                demande = await tx.get_demande(demande_id)
            assert demande is not None
        return demande

    async def _mark_creating(self, tx: Any, demande: Demande) -> None:
        # Recorded before the request: a bot killed while createRoom is in flight knows,
        # on restart, to wait for that room rather than make a second one (the homeserver
        # finishes the request without us).
        await tx.set_state(_creating_key(demande.id), self.clock.now().isoformat())

    async def _create_room(self, demande: Demande, invitees: list[str]) -> str:
        names = [self.policies.organisations[o].name for o in demande.organisations]
        body = room_spec.create_room_body(
            reference=demande.reference,
            name=room_name(demande.reference, names, demande.territoire),
            bot_user_id=self.bot_user_id,
            invitees=invitees,
            allowed_servers=self.allowed_servers,
            room_version=self.room_version,
        )
        room_id = await self.gateway.create_room(body)
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
        assert demande.room_id is not None
        # One membership read, which also rebuilds our view of the room for the dossier.
        present = set((await self.gateway.refresh_members(demande.room_id)).users)
        now = self.clock.now()
        invited_now = False
        for user in invitees:
            if user in present:
                continue
            try:
                await self.gateway.invite(demande.room_id, user)
            except MatrixError as exc:
                if exc.transient:
                    raise
                # e.g. an unknown account: the others must still be invited.
                log.warning("demande %s: invite refused: %s", demande.reference, exc.errcode)
                continue
            invited_now = True
            async with self.store.transaction() as tx:
                await tx.audit(
                    "invited",
                    actor=self.bot_user_id,
                    reference=demande.reference,
                    details={"user": user},
                    now=now,
                )
        if invited_now:
            await self.gateway.refresh_members(demande.room_id)

    async def _enqueue_dossier(self, tx: Any, demande: Demande) -> dict[str, Any]:
        """Queue the dossier and return its content; idempotent (a second call keeps the first)."""
        assert demande.room_id is not None
        content = await dossier_content(
            tx, demande, self.policies, status=demande.status, repost=False
        )
        await outbox.enqueue(
            tx,
            txn_id=dossier_txn(demande.reference),
            room_id=demande.room_id,
            content=content,
            now=self.clock.now(),
        )
        return content

    async def _post_dossier(self, demande: Demande) -> None:
        assert demande.room_id is not None
        async with self.store.transaction() as tx:
            await self._enqueue_dossier(tx, demande)
        await self.outbox.flush(demande.room_id)

    async def _flush(self, room_id: str) -> None:
        try:
            await self.outbox.flush(room_id)
        except MatrixError as exc:
            log.warning("reply queued, homeserver unavailable: %s", exc)
            self.outbox.wake()


NOT_A_FORM = (
    "Je n'ai pas reconnu de formulaire dans votre message. Envoyez !demande pour "
    "recevoir le formulaire à remplir, ou !aide pour la liste des commandes."
)


def already_confirmed(reference: str) -> str:
    return f"La demande {reference} est déjà ouverte : il n'y a plus rien à confirmer."


# How long a restarted bot looks for a room whose creation it had requested.
ORPHAN_SEARCH_SECONDS = 10.0


def _creating_key(demande_id: int) -> str:
    return f"demande.{demande_id}.create_room_sent_at"


def _draft_reference_key(draft_id: int) -> str:
    return f"draft.{draft_id}.reference"


def _matrix_ids(participants: Sequence[Any]) -> list[str]:
    return sorted({p.matrix_id for p in participants if p.matrix_id})


def dossier_txn(reference: str) -> str:
    return f"dossier-{reference}"
