"""Commands and messages in a demande room.

Each handler runs inside the transaction that marks the event processed, gets
what it needs from a small context, and returns a `Reply`; status notices and
the reply are queued in the outbox by that same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from bot.commands.framework import (
    Arg,
    CommandSet,
    CommandSpec,
    NotACommand,
    ParseFailure,
    PendingConfirmation,
    Reply,
)
from bot.domain import status as status_rules
from bot.domain.model import Agent, Demande, Role, Status, Usefulness
from bot.domain.routing import may_invite_agent, may_invite_group
from bot.matrix import content as mx
from bot.services import outbox as outbox_mod

if TYPE_CHECKING:
    from bot.services.demande_room import DemandeRooms
    from bot.services.opening import Incoming

log = logging.getLogger(__name__)

# Agents read times in French local time.
PARIS = ZoneInfo("Europe/Paris")

SECTION_DEMANDE = "La demande"
SECTION_ANSWERS = "Réponses rapides (instructeurs)"
SECTION_CLOSE = "Clôture (aidant)"


@dataclass
class RoomCtx:
    rooms: DemandeRooms
    tx: Any
    demande: Demande
    msg: Incoming
    agent: Agent
    participant_kind: str
    aidant: Agent
    invited_users: list[str] = field(default_factory=list)

    @property
    def is_instructeur(self) -> bool:
        return self.participant_kind in ("instructeur", "invite") and self.agent.has(
            Role.INSTRUCTEUR
        )

    @property
    def is_aidant_side(self) -> bool:
        """The aidant, or a member of the aidant's group: they may close and reopen."""
        if self.agent.id == self.aidant.id:
            return True
        return (
            self.agent.group_id is not None
            and self.agent.group_id == self.aidant.group_id
            and self.agent.has(Role.AIDANT)
        )


ROOM: CommandSet[RoomCtx] = CommandSet()


async def _status_reply(ctx: RoomCtx, event: status_rules.Event, done: str, **kw: Any) -> Reply:
    """Apply a status event; one reply says who did what and what the status became."""
    result = await ctx.rooms.apply_status(
        ctx.tx, ctx.demande, event, actor=ctx.msg.sender, txn=ctx.msg.event_id, announce=False, **kw
    )
    if isinstance(result, status_rules.Refusal):
        return Reply.error(result.reason)
    return Reply(f"{done} {result.notice}" if result.notice else done)


@ROOM.command(
    CommandSpec("statut", (), "Afficher le statut de la demande.", section=SECTION_DEMANDE)
)
async def _statut(ctx: RoomCtx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    d = await ctx.tx.get_demande(ctx.demande.id)
    times = d.times
    lines = [f"Demande {d.reference} : {d.status.label}", f"Ouverte le {_fmt(times.created_at)}"]
    if times.first_answer_at:
        lines.append(f"Première réponse le {_fmt(times.first_answer_at)}")
    if times.treated_at:
        lines.append(f"Traitée le {_fmt(times.treated_at)}")
    if times.closed_at and d.status == Status.CLOTUREE:
        lines.append(f"Clôturée le {_fmt(times.closed_at)}")
    participants = await ctx.tx.participants(d.id)
    names = []
    for p in participants:
        agent = await ctx.tx.get_agent(p.agent_id)
        if agent is not None:
            names.append(agent.display_name + (" (par courriel)" if agent.email_only else ""))
    lines.append("Participants : " + ", ".join(names))
    return Reply("\n".join(lines))


@ROOM.command(
    CommandSpec(
        "inviter",
        (Arg("cible", "rest", "le nom d'un groupe, ou l'identifiant Matrix d'un agent"),),
        "Inviter un groupe (tous ses instructeurs) ou un agent dans la demande.",
        section=SECTION_DEMANDE,
    )
)
async def _inviter(ctx: RoomCtx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    target = str(args["cible"]).strip()
    tx = ctx.tx
    rules = ctx.rooms.membership_rules()
    policies = ctx.rooms.policies
    participants = await tx.participants(ctx.demande.id)
    if target.startswith("@"):
        agent = await tx.get_agent_by_matrix_id(target)
        if agent is None:
            return Reply.error(
                f"{target} n'est pas dans l'annuaire du service : invitation refusée."
            )
        group = await tx.get_group(agent.group_id) if agent.group_id else None
        decision = may_invite_agent(
            ctx.demande.territoire, agent, group, participants, rules, policies
        )
    else:
        group = await tx.get_group_by_name(target)
        if group is None:
            names = ", ".join(sorted(g.name for g in await tx.list_groups()))
            return Reply.error(f"Groupe « {target} » inconnu. Groupes existants : {names}.")
        decision = may_invite_group(
            ctx.demande.territoire,
            group,
            await tx.agents_of_group(group.id),
            participants,
            rules,
            policies,
        )
    if not decision.allowed:
        await tx.audit(
            "invitation_refused",
            actor=ctx.msg.sender,
            reference=ctx.demande.reference,
            details={"target": target},
            now=ctx.rooms.clock.now(),
        )
        return Reply.error(f"Invitation refusée : {decision.reason}.")
    now = ctx.rooms.clock.now()
    added = []
    for agent in decision.agents:
        await tx.add_participant(
            demande_id=ctx.demande.id, agent=agent, kind="invite", added_by=ctx.msg.sender, now=now
        )
        await tx.audit(
            "participant_added",
            actor=ctx.msg.sender,
            reference=ctx.demande.reference,
            details={"agent": agent.id},
            now=now,
        )
        added.append(agent.display_name + (" (par courriel)" if agent.email_only else ""))
        if agent.matrix_id:
            ctx.invited_users.append(agent.matrix_id)
    if ctx.rooms.email is not None:  # email-only agents get the dossier by email
        await ctx.rooms.email.on_participants_added(
            tx, ctx.demande, decision.agents, key=ctx.msg.event_id
        )
    text = "Invité(s) : " + ", ".join(added) + "."
    if decision.skipped:
        text += (
            " Non invité(s) : "
            + "; ".join(f"{a.display_name} ({why})" for a, why in decision.skipped)
            + "."
        )
    return Reply(text)


@ROOM.command(
    CommandSpec(
        "jemenoccupe", (), "Indiquer que vous prenez la demande en charge.", section=SECTION_ANSWERS
    )
)
async def _jemenoccupe(ctx: RoomCtx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    if not ctx.is_instructeur:
        return Reply.error("Seuls les instructeurs invités peuvent utiliser cette réponse.")
    return await _status_reply(
        ctx, status_rules.InstructeurAnswer(), f"{ctx.agent.display_name} s'occupe de la demande."
    )


@ROOM.command(
    CommandSpec(
        "pasleboninterlocuteur",
        (),
        "Indiquer que vous n'êtes pas le bon interlocuteur (pensez à !inviter le bon groupe).",
        section=SECTION_ANSWERS,
    )
)
async def _pasleboninterlocuteur(
    ctx: RoomCtx, args: Mapping[str, Any], flags: frozenset[str]
) -> Reply:
    if not ctx.is_instructeur:
        return Reply.error("Seuls les instructeurs invités peuvent utiliser cette réponse.")
    await ctx.tx.audit(
        "not_the_right_contact",
        actor=ctx.msg.sender,
        reference=ctx.demande.reference,
        now=ctx.rooms.clock.now(),
    )
    return Reply(
        f"{ctx.agent.display_name} indique ne pas être le bon interlocuteur pour cette demande. "
        "Un participant peut inviter le groupe compétent avec !inviter <groupe>."
    )


@ROOM.command(
    CommandSpec("traitee", (), "Indiquer que la demande est traitée.", section=SECTION_ANSWERS)
)
async def _traitee(ctx: RoomCtx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    if not ctx.is_instructeur:
        return Reply.error("Seuls les instructeurs invités peuvent marquer la demande traitée.")
    return await _status_reply(
        ctx, status_rules.Treated(), f"{ctx.agent.display_name} a traité la demande."
    )


@ROOM.command(
    CommandSpec(
        "clore",
        (
            Arg(
                "utilite",
                "choice",
                "La réponse vous semble-t-elle utile pour l'usager ?",
                choices=("utile", "nesaispas", "inutile"),
            ),
        ),
        "Clore la demande, en disant si la réponse est utile pour l'usager.",
        section=SECTION_CLOSE,
    )
)
async def _clore(ctx: RoomCtx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    if not ctx.is_aidant_side:
        return Reply.error(
            "Seul l'aidant qui a ouvert la demande, ou un membre de son groupe, peut la clore."
        )
    usefulness = Usefulness(str(args["utilite"]).lower())
    return await _status_reply(
        ctx,
        status_rules.Closed(usefulness),
        f"{ctx.agent.display_name} clôt la demande.",
        usefulness=usefulness,
    )


@ROOM.command(CommandSpec("rouvrir", (), "Rouvrir une demande clôturée.", section=SECTION_CLOSE))
async def _rouvrir(ctx: RoomCtx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    if not ctx.is_aidant_side:
        return Reply.error(
            "Seul l'aidant qui a ouvert la demande, ou un membre de son groupe, peut la rouvrir."
        )
    return await _status_reply(
        ctx, status_rules.Reopened(), f"{ctx.agent.display_name} rouvre la demande."
    )


@ROOM.command(
    CommandSpec(
        "notifications",
        (Arg("choix", "choice", "oui ou non", choices=("oui", "non")),),
        "Recevoir ou non un avis par courriel à chaque nouveau message (sans son contenu).",
        section=SECTION_DEMANDE,
    )
)
async def _notifications(ctx: RoomCtx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    if ctx.rooms.email is None:
        return Reply.error("Ce service n'envoie pas de courriels.")
    if not ctx.agent.email:
        return Reply.error(
            "L'annuaire ne connaît pas votre adresse électronique : demandez à un "
            "administrateur de l'ajouter."
        )
    on = str(args["choix"]).lower() == "oui"
    await ctx.tx.set_email_notifications(ctx.agent.id, on, ctx.rooms.clock.now())
    if on:
        return Reply(
            f"{ctx.agent.display_name} recevra un avis par courriel à {ctx.agent.email} "
            "à chaque nouveau message de ses demandes (sans son contenu)."
        )
    return Reply(f"{ctx.agent.display_name} ne recevra plus d'avis par courriel.")


def _fmt(when: datetime) -> str:
    return when.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")


async def handle(rooms: DemandeRooms, demande: Demande, msg: Incoming) -> None:
    """A text message in a demande room: a command, or an answer that moves the status."""
    now = rooms.clock.now()
    invited: list[str] = []
    intruder = False
    async with rooms.store.transaction() as tx:
        if not await tx.mark_processed(msg.event_id, msg.room_id, now):
            return
        participants = {p.matrix_id: p for p in await tx.participants(demande.id) if p.matrix_id}
        participant = participants.get(msg.sender)
        agent = await tx.get_agent_by_matrix_id(msg.sender)
        if participant is None or agent is None or not agent.active:
            # Never act on a message from someone who should not be here.
            await tx.audit(
                "message_from_unauthorised",
                actor=msg.sender,
                reference=demande.reference,
                now=now,
            )
            intruder = True
        else:
            aidant = await tx.get_agent(demande.aidant_agent_id)
            assert aidant is not None
            ctx = RoomCtx(rooms, tx, demande, msg, agent, participant.kind, aidant)
            parsed = ROOM.parse(msg.body)
            reply: Reply | PendingConfirmation | None = None
            if isinstance(parsed, NotACommand):
                await _free_message(ctx)
            elif isinstance(parsed, ParseFailure):
                reply = parsed.reply()
            else:
                if parsed.spec.name in ("confirmer", "annuler"):
                    reply = Reply.error("Aucune commande n'attend de confirmation dans ce salon.")
                else:
                    reply = await ROOM.dispatch(parsed, ctx)
                if parsed.spec.name != "aide" and isinstance(reply, Reply):
                    # Refusals are audited too (never the message content).
                    await tx.audit(
                        "command_refused" if reply.is_error else f"command_{parsed.spec.name}",
                        actor=msg.sender,
                        reference=demande.reference,
                        details={"command": parsed.spec.name},
                        now=now,
                    )
            if isinstance(reply, Reply):
                await outbox_mod.enqueue(
                    tx,
                    txn_id=f"reply-{msg.event_id}",
                    room_id=msg.room_id,
                    content=mx.notice(reply.text, reply.html),
                    now=now,
                )
            invited = ctx.invited_users
    if intruder:
        await rooms.reconcile(msg.room_id)
        return
    if invited:
        await rooms.invite_users(demande, invited)
    await rooms.flush(msg.room_id)


async def _free_message(ctx: RoomCtx) -> None:
    """Not a command: an instructeur's answer, or the aidant writing on a closed demande."""
    event: status_rules.Event | None = None
    if ctx.is_instructeur:
        event = status_rules.InstructeurAnswer()
    elif ctx.is_aidant_side and ctx.demande.status == Status.CLOTUREE:
        event = status_rules.AidantMessage()
    if event is not None:
        await ctx.rooms.apply_status(
            ctx.tx, ctx.demande, event, actor=ctx.msg.sender, txn=ctx.msg.event_id, announce=True
        )
    if ctx.rooms.email is not None:
        await ctx.rooms.email.on_room_message(
            ctx.tx,
            ctx.demande,
            event_key=ctx.msg.event_id,
            author=ctx.agent,
            author_id=ctx.msg.sender,
            content=ctx.msg.content or {"msgtype": "m.text", "body": ctx.msg.body},
        )


async def handle_email_reply(
    rooms: DemandeRooms,
    tx: Any,
    demande: Demande,
    agent: Agent,
    participant_kind: str,
    *,
    key: str,
    command: str | None,
    text: str,
) -> None:
    """An email-only agent's reply, already posted to the room by the caller in `tx`.

    A quick answer (`!traitee`…) runs as the room command does; a plain answer moves
    the status like a Matrix message. `key` is unique to the email (txn IDs derive from it).
    """
    from bot.services.opening import Incoming

    aidant = await tx.get_agent(demande.aidant_agent_id)
    assert aidant is not None and agent.email is not None
    content = {"msgtype": "m.text", "body": text}
    msg = Incoming(demande.room_id or "", key, agent.email, text, True, content)
    ctx = RoomCtx(rooms, tx, demande, msg, agent, participant_kind, aidant)
    if command is None:
        await _free_message(ctx)
        return
    parsed = ROOM.parse("!" + command)
    if isinstance(parsed, NotACommand | ParseFailure):
        return
    reply = await ROOM.dispatch(parsed, ctx)
    if isinstance(reply, Reply):
        if not reply.is_error:
            await tx.audit(
                f"command_{parsed.spec.name}",
                actor=agent.email,
                reference=demande.reference,
                details={"via": "email"},
                now=rooms.clock.now(),
            )
        await outbox_mod.enqueue(
            tx,
            txn_id=f"reply-{key}",
            room_id=msg.room_id,
            content=mx.notice(reply.text, reply.html),
            now=rooms.clock.now(),
        )
    if text and rooms.email is not None:
        await rooms.email.on_room_message(
            tx, demande, event_key=key, author=agent, author_id=agent.email, content=content
        )
