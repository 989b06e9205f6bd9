"""Follow-up jobs: reminders of late demandes, the weekly digest to aidants.

The decisions are in `bot.domain.followup`; this module gathers the facts,
posts the reminders (in the demande room, to the groups' responsables, by
email for email-only participants when the email bridge offers it) and
records each reminder in the audit trail, which is also what keeps a reminder
from being sent twice for the same episode.

Messages to one agent go to a private encrypted room between the bot and that
agent ("Administration+ · suivi"), created the first time; its ID is kept in
`bot_state`. An email-only agent gets them by email, through the bridge's hook.
"""

from __future__ import annotations

import hashlib
import logging

from bot.domain.calendar import PARIS
from bot.domain.followup import (
    DemandeFacts,
    FollowUpRules,
    Late,
    LateKind,
    Reminder,
    ReminderReport,
    closable_by_aidant,
    late_notice,
    lateness,
    reminders_due,
)
from bot.domain.model import Agent, Demande, Role, Status
from bot.matrix import content as mx
from bot.matrix.port import Gateway
from bot.ports import EmailHooks, Sender
from bot.services.clock import Clock
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

REMINDED = "late_reminded"
NOTICE_ROOM_KEY = "notices.room.{agent_id}"


def facts(d: Demande) -> DemandeFacts:
    return DemandeFacts(
        reference=d.reference,
        territoire=d.territoire,
        status=d.status,
        times=d.times,
        aidant_agent_id=d.aidant_agent_id,
        group_ids=d.group_ids,
    )


def _key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class AgentNotices:
    """One private room per agent for the bot's follow-up messages."""

    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        sender: Sender,
        clock: Clock,
        email: EmailHooks,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.sender = sender
        self.clock = clock
        self.email = email

    async def room_of(self, agent: Agent) -> str:
        assert agent.matrix_id is not None
        key = NOTICE_ROOM_KEY.format(agent_id=agent.id)
        async with self.store.transaction() as tx:
            room_id = await tx.get_state(key)
        if room_id is not None:
            return room_id
        room_id = await self.gateway.create_room(
            {
                "name": "Administration+ · suivi",
                "preset": "private_chat",
                "is_direct": True,
                "invite": [agent.matrix_id],
                "initial_state": [
                    {
                        "type": "m.room.encryption",
                        "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                    }
                ],
            }
        )
        self.gateway.track_new_room(room_id, invited=[agent.matrix_id])
        async with self.store.transaction() as tx:
            await tx.set_state(key, room_id)
        return room_id

    async def send(self, agent: Agent, subject: str, text: str, *, key: str) -> bool:
        """True if the message was queued (Matrix room, or email for email-only agents)."""
        if agent.matrix_id is None:
            async with self.store.transaction() as tx:
                queued = await self.email.notify_agent(tx, agent, subject, text, key=key)
            if not queued:
                log.info("agent %d is email-only and got no email (bridge off?)", agent.id)
            return queued
        room_id = await self.room_of(agent)
        async with self.store.transaction() as tx:
            await self.sender.enqueue(
                tx,
                txn_id=f"notice-{key}",
                room_id=room_id,
                # Addressed to this agent, who must act on it: Element notifies them.
                content=mx.to_act(text, None, [agent.matrix_id]),
                recipients=[agent.matrix_id],
            )
        return True


class FollowUp:
    def __init__(
        self,
        *,
        store: Store,
        sender: Sender,
        notices: AgentNotices,
        email: EmailHooks,
        clock: Clock,
        rules: FollowUpRules,
    ) -> None:
        self.store = store
        self.sender = sender
        self.notices = notices
        self.email = email
        self.clock = clock
        self.rules = rules

    async def _open_demandes(self, tx: Tx) -> list[Demande]:
        return [
            d
            for d in await tx.list_demandes()
            if d.creation_step == "ready" and d.status is not Status.CLOTUREE
        ]

    async def late_now(self) -> list[tuple[Demande, Late]]:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            demandes = await self._open_demandes(tx)
        out = []
        for d in demandes:
            late = lateness(d.status, d.times, d.territoire, now, self.rules)
            if late is not None:
                out.append((d, late))
        return sorted(out, key=lambda item: item[1].deadline)

    async def due(self) -> list[Reminder]:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            demandes = await self._open_demandes(tx)
            seen = frozenset(
                (ref, str(details.get("episode")))
                for ref, _, details in await tx.audit_details(REMINDED)
                if ref is not None
            )
        return reminders_due([facts(d) for d in demandes], seen, now, self.rules)

    async def remind(self, *, actor: str) -> ReminderReport:
        """Remind every late demande once per episode: room, responsables, emails."""
        due = await self.due()
        now = self.clock.now()
        responsables: dict[int, tuple[Agent, list[Reminder]]] = {}
        emails = 0
        for reminder in due:
            ref = reminder.demande.reference
            days = (
                self.rules.first_answer_days
                if reminder.late.kind is LateKind.NO_FIRST_ANSWER
                else self.rules.followup_days
            )
            text = late_notice(ref, reminder.late, days)
            txn = f"late-{ref}-{_key(reminder.late.episode)}"
            async with self.store.transaction() as tx:
                demande = await tx.get_demande_by_reference(ref)
                assert demande is not None and demande.room_id is not None
                # The instructeurs are the ones expected to answer: they are asked to act.
                instructeurs = [
                    p.matrix_id
                    for p in await tx.participants(demande.id)
                    if p.matrix_id and p.kind in ("instructeur", "invite")
                ]
                await self.sender.enqueue(
                    tx,
                    txn_id=txn,
                    room_id=demande.room_id,
                    content=mx.to_act(text, None, instructeurs),
                )
                if self.email.enabled and any(
                    p.matrix_id is None for p in await tx.participants(demande.id)
                ):
                    await self.email.room_message(
                        tx,
                        demande,
                        event_key=txn,
                        author=None,
                        author_id="Administration+",
                        content=mx.notice(text),
                    )
                    emails += 1
                await tx.audit(
                    REMINDED,
                    actor=actor,
                    reference=ref,
                    details={"episode": reminder.late.episode, "kind": reminder.late.kind.value},
                    now=now,
                )
                for group_id in demande.group_ids:
                    for agent in await tx.agents_of_group(group_id):
                        if agent.has(Role.RESPONSABLE):
                            responsables.setdefault(agent.id, (agent, []))[1].append(reminder)
        told = 0
        for agent, items in responsables.values():
            lines = [
                "Demandes en retard de votre groupe (sans réponse d'instructeur dans les délais) :"
            ]
            for r in items:
                since = r.late.since.astimezone(PARIS).strftime("%d/%m/%Y")
                lines.append(f"  - {r.demande.reference} : {r.late.kind.label} depuis le {since}")
            key = _key("responsable", str(agent.id), *(r.late.episode for r in items))
            if await self.notices.send(agent, "Demandes en retard", "\n".join(lines), key=key):
                told += 1
        return ReminderReport(due, told, emails)

    async def digest_plan(self) -> dict[int, list[DemandeFacts]]:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            demandes = await self._open_demandes(tx)
        return closable_by_aidant([facts(d) for d in demandes], now, self.rules)

    async def send_digest(self, *, actor: str) -> int:
        """The weekly digest: to each aidant, the demandes they could close."""
        plan = await self.digest_plan()
        now = self.clock.now()
        week = now.astimezone(PARIS).strftime("%G-W%V")
        sent = 0
        for aidant_id, items in plan.items():
            async with self.store.transaction() as tx:
                aidant = await tx.get_agent(aidant_id)
            if aidant is None or not aidant.active:
                continue
            lines = [
                f"Ces demandes ont reçu une réponse il y a plus de {self.rules.digest_after_days} "
                "jours. Si la situation de l'usager est réglée, vous pouvez les clore "
                "(!clore oui, !clore non ou !clore je ne sais pas, dans le salon de la "
                "demande) :"
            ]
            for d in items:
                when = d.times.last_answer_at or d.times.treated_at
                day = when.astimezone(PARIS).strftime("%d/%m/%Y") if when else "?"
                lines.append(f"  - {d.reference} ({d.status.label}, dernière réponse le {day})")
            if await self.notices.send(
                aidant, "Demandes à clore", "\n".join(lines), key=f"digest-{aidant_id}-{week}"
            ):
                sent += 1
            async with self.store.transaction() as tx:
                await tx.audit(
                    "digest_sent",
                    actor=actor,
                    details={"agent": aidant_id, "demandes": [d.reference for d in items]},
                    now=now,
                )
        return sent
