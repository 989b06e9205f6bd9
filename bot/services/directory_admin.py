"""What a directory change does to the rooms (as Administration+ does it).

- An active instructeur of a group joins the open demandes sent to that group:
  added to each ledger first (so the guard lets them in), then invited; the
  dossier is posted again for them when they join.
- A deactivated agent leaves every demande: removed from each ledger (which
  also revokes their reply-by-email tokens), kicked with a clear reason, and
  the guard's `reconcile` runs as the safety net.
- The admin room follows the operators.
- A CSV import follows the same rules, line by line (see `bot.services.directory`).
- An agent who arrives (added, imported, reactivated, given a Matrix account) is
  greeted once (`bot.services.welcome`), after joining their group's demandes.
- An email-only agent who gets a Matrix account (made by the homeserver at their first
  sign-in with the State's agent sign-in, carrying their verified email) is linked to
  it: the directory and the ledgers of their demandes take the Matrix ID (so the bridge
  stops emailing them), they are invited to their open demandes and greeted there.
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
from bot.ports import ConsoleTx, Departure, EmailHooks, Sender
from bot.services.clock import Clock
from bot.services.directory import apply_import, plan_import, record_refusal, taking_part
from bot.services.failures import homeserver_outage
from bot.services.room_guard import RoomGuard
from bot.services.welcome import Welcomes
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
        welcomes: Welcomes,
        email: EmailHooks,
        account_of: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        """`account_of`: the local Matrix account carrying this verified email (the
        homeserver's admin API); None when no admin token is configured."""
        self.email = email
        self.store = store
        self.gateway = gateway
        self.guard = guard
        self.sender = sender
        self.clock = clock
        self.sync_admin_room = sync_admin_room
        self.welcomes = welcomes
        self.account_of = account_of

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
        """Add the instructeurs to their group's open demandes; returns the references.

        Called after every directory change of these agents (added, imported, changed,
        reactivated): those not greeted yet on their channel are greeted."""
        await self._link_existing_accounts(agent_ids, actor=actor)
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
        await self.welcomes.greet(agent_ids, actor=actor)
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

    # ------------------------------------------------------------ accounts
    async def _link_existing_accounts(self, agent_ids: list[int], *, actor: str) -> None:
        """An email-only agent added after their first sign-in: their account exists."""
        if self.account_of is None:
            return
        for agent_id in agent_ids:
            async with self.store.transaction() as tx:
                agent = await tx.get_agent(agent_id)
            if agent is None or not agent.active or not agent.email_only or not agent.email:
                continue
            try:
                user_id = await self.account_of(agent.email)
            except MatrixError as exc:
                if homeserver_outage(exc):
                    raise
                log.warning("account of agent %d: %s %s", agent.id, exc.status, exc.errcode)
                continue
            if user_id is not None:
                await self.link_account(agent.email, user_id, actor=actor, greet=False)

    async def link_account(
        self, email: str, user_id: str, *, actor: str, greet: bool = True
    ) -> list[str]:
        """Link the email-only agent with this email to the Matrix account `user_id`
        (its verified email); returns the open demandes they are invited to."""
        now = self.clock.now()
        invited: list[str] = []
        async with self.store.transaction() as tx:
            agent = await tx.get_agent_by_email(email)
            if agent is None or not agent.active or not agent.email_only:
                return []
            other = await tx.get_agent_by_matrix_id(user_id)
            if other is not None:
                await tx.audit(
                    "agent_account_link_refused",
                    actor=actor,
                    details={"agent": agent.id, "other_agent": other.id},
                    now=now,
                )
                return []
            linked = replace(agent, matrix_id=user_id)
            await tx.update_agent(linked)
            await tx.link_participants(agent.id, user_id)
            for demande in await tx.demandes_of_agent(agent.id):
                if demande.room_id is None or demande.status.value == "cloturee":
                    continue
                if not any(p.agent_id == agent.id for p in await tx.participants(demande.id)):
                    continue
                await self.guard.invite(tx, demande.room_id, [user_id])
                await self.sender.enqueue(
                    tx,
                    txn_id=f"linked-{demande.reference}-{agent.id}",
                    room_id=demande.room_id,
                    content=mx.notice(
                        f"{agent.display_name} suit désormais cette demande sur Matrix "
                        "(et non plus par courriel)."
                    ),
                )
                invited.append(demande.reference)
            await tx.audit(
                "agent_account_linked",
                actor=actor,
                details={"agent": agent.id, "user": user_id, "demandes": len(invited)},
                now=now,
            )
        if greet:
            await self.welcomes.greet([agent.id], actor=actor)
        return invited

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
            await tx.forget_welcomes(agent.id)  # greeted again if they come back
            for departure in left:
                demande = await tx.get_demande_by_reference(departure.reference)
                assert demande is not None
                await tx.remove_participant(demande_id=demande.id, agent_id=agent.id, now=now)
                await self.email.participant_removed(
                    tx,
                    demande,
                    agent,
                    why="compte désactivé",
                    key=f"{departure.reference}-{agent.id}-{now.isoformat()}",
                )
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
