"""What a directory change does to the rooms (as Administration+ does it).

- An active instructeur of a group joins the open demandes sent to that group:
  added to each ledger first (so the guard lets them in), then invited; the
  dossier is posted again for them when they join.
- A deactivated agent leaves every demande: removed from each ledger (which
  also revokes their reply-by-email tokens), kicked with a clear reason, and
  the guard's `reconcile` runs as the safety net.
- The admin room follows the operators.
- A CSV import follows the same rules, line by line (see `bot.services.directory`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from bot.domain.directory_csv import DirectoryImport
from bot.domain.directory_import import ImportOutcome, ImportPlan, ImportRefused
from bot.domain.model import Agent, Demande, Role
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.ports import ConsoleTx, Departure, Sender
from bot.services.clock import Clock
from bot.services.directory import apply_import, plan_import, record_refusal, taking_part
from bot.services.failures import homeserver_outage
from bot.services.room_guard import RoomGuard
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

REASON_DEACTIVATED = "Compte désactivé dans l'annuaire du service."


class DirectoryAdmin:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        guard: RoomGuard,
        sender: Sender,
        clock: Clock,
        sync_admin_room: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.guard = guard
        self.sender = sender
        self.clock = clock
        self.sync_admin_room = sync_admin_room

    # ------------------------------------------------------------ joining
    async def demandes_to_join(self, tx: Tx, agent: Agent) -> list[Demande]:
        """Open demandes of the agent's group they are not part of yet."""
        if not (agent.active and agent.has(Role.INSTRUCTEUR) and agent.group_id is not None):
            return []
        out = []
        for demande_id in await tx.open_demande_ids_of_group(agent.group_id):
            participants = await tx.participants(demande_id)
            if any(p.agent_id == agent.id for p in participants):
                continue
            demande = await tx.get_demande(demande_id)
            if demande is not None:
                out.append(demande)
        return out

    async def join_group_demandes(self, agent_ids: list[int], *, actor: str) -> list[str]:
        """Add the instructeurs to their group's open demandes; returns the references."""
        now = self.clock.now()
        references: list[str] = []
        async with self.store.transaction() as tx:
            for agent_id in agent_ids:
                agent = await tx.get_agent(agent_id)
                if agent is None:
                    continue
                for demande in await self.demandes_to_join(tx, agent):
                    # "invite": they arrive after the opening, the dossier is posted again.
                    await tx.add_participant(
                        demande_id=demande.id, agent=agent, kind="invite", added_by=actor, now=now
                    )
                    await tx.audit(
                        "participant_added",
                        actor=actor,
                        reference=demande.reference,
                        details={"agent": agent.id, "why": "new_instructeur_of_group"},
                        now=now,
                    )
                    if demande.room_id is None:
                        continue  # its room is being built: the opening invites the ledger
                    await self.sender.enqueue(
                        tx,
                        txn_id=f"joined-{demande.reference}-{agent.id}-{now.isoformat()}",
                        room_id=demande.room_id,
                        content=mx.notice(
                            f"{agent.display_name}, nouvel instructeur du groupe, rejoint la "
                            "demande" + (" (par courriel)." if agent.email_only else ".")
                        ),
                    )
                    references.append(demande.reference)
                    if agent.matrix_id:
                        await self.guard.invite(tx, demande.room_id, [agent.matrix_id])
        return references

    # ------------------------------------------------------------ importing
    async def preview_import(
        self, parsed: DirectoryImport, *, actor: str, file: str | None = None
    ) -> ImportPlan:
        """What the import would do, line by line; a refused plan is audited."""
        async with self.store.transaction() as tx:
            plan = await plan_import(tx, parsed)
        if plan.refused:
            await record_refusal(
                self.store, plan.refused, actor=actor, now=self.clock.now(), file=file
            )
        return plan

    async def import_directory(
        self, parsed: DirectoryImport, *, actor: str, file: str | None = None
    ) -> ImportOutcome:
        """All or nothing, checked again (the directory may have changed since the preview);
        raises `ImportRefused`, audited. Then the active instructeurs join their group's
        open demandes and the admin room follows the operators."""
        try:
            async with self.store.transaction() as tx:
                outcome = await apply_import(tx, parsed, actor=actor, now=self.clock.now())
        except ImportRefused as exc:
            await record_refusal(
                self.store, exc.refused, actor=actor, now=self.clock.now(), file=file
            )
            raise
        joined = await self.join_group_demandes(list(outcome.agent_ids), actor=actor)
        await self.sync_admin_room()
        return replace(outcome, joined=tuple(joined))

    # ------------------------------------------------------------ leaving
    async def departures(self, tx: ConsoleTx, agent: Agent) -> list[Departure]:
        return [Departure(d.reference, d.room_id) for d in await taking_part(tx, agent.id)]

    async def deactivate(self, agent_id: int, *, actor: str) -> list[Departure]:
        """Deactivate, leave every demande (ledger, tokens, kick); returns the demandes left."""
        now = self.clock.now()
        async with self.store.transaction() as tx:
            agent = await tx.get_agent(agent_id)
            if agent is None:
                raise LookupError(f"agent {agent_id}")
            left = await self.departures(tx, agent)
            await tx.set_agent_active(agent.id, False)
            for departure in left:
                demande = await tx.get_demande_by_reference(departure.reference)
                assert demande is not None
                await tx.remove_participant(demande_id=demande.id, agent_id=agent.id, now=now)
                await tx.audit(
                    "participant_removed",
                    actor=actor,
                    reference=departure.reference,
                    details={"agent": agent.id, "why": "deactivated"},
                    now=now,
                )
                if departure.room_id:
                    await self.sender.enqueue(
                        tx,
                        txn_id=f"left-{departure.reference}-{agent.id}-{now.isoformat()}",
                        room_id=departure.room_id,
                        content=mx.notice(
                            f"{agent.display_name} ne participe plus à cette demande "
                            "(compte désactivé)."
                        ),
                    )
                    # The guard checks the room once the kick below is done (or failed).
                    await self.guard.request(tx, departure.room_id, "agent_deactivated")
            if agent.email:
                # Reply-by-email tokens die with the account.
                await tx.revoke_reply_tokens(agent_email=agent.email, now=now)
            await tx.audit(
                "agent_deactivated",
                actor=actor,
                details={"agent": agent.id, "demandes": len(left)},
                now=now,
            )
        for departure in left:
            if departure.room_id is None or not agent.matrix_id:
                continue
            try:
                await self.gateway.kick(departure.room_id, agent.matrix_id, REASON_DEACTIVATED)
            except MatrixError as exc:
                # An outage: the guard, already asked, removes them once it can.
                if not homeserver_outage(exc):
                    log.info("kick of %s: %s", agent.matrix_id, exc.errcode)
        if agent.has(Role.OPERATEUR):
            await self.sync_admin_room()
        return left
