"""The instructeurs' companion room of a demande: created on first use, membership
kept equal to the ledger's instructeurs, purged with the demande.

`!entreinstructeurs` asks for it (in the command's transaction); this worker creates
it after the commit, invites the demande's instructeurs and removes anyone else, level-
triggered: woken by the request, by the demande room's commands (an invited group) and
by the companion room's membership events, and every minute. The bot does not act on
what is written there (no status, no email): it is the agents' own conversation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from nio import RoomMemberEvent

from bot.domain import room_spec
from bot.domain.companion import companion_members
from bot.domain.model import Demande
from bot.matrix import content as mx
from bot.matrix.port import Gateway
from bot.ports import Sender
from bot.services.clock import Clock
from bot.services.room_specs import RoomSpecs
from bot.services.worker import Wakeup, Worker
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

COMPANION_STATE_TYPE = "fr.aplus.companion"
INVITED_KEY = "companion.invited.{room_id}"
WELCOME = (
    "Salon réservé aux instructeurs de la demande {reference} : l'aidant ne le voit pas. "
    "Les messages écrits ici ne changent pas le statut de la demande et ne sont pas "
    "envoyés par courriel."
)


async def allowed_in(tx: Tx, demande: Demande) -> set[str]:
    """The demande's instructeurs with a Matrix account (the companion room's ledger)."""
    participants = await tx.participants(demande.id)
    agents = {a.id: a for a in [await tx.get_agent(p.agent_id) for p in participants] if a}
    aidant = await tx.get_agent(demande.aidant_agent_id)
    return companion_members(participants, agents, aidant.group_id if aidant else None)


class Companions:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        specs: RoomSpecs,
        sender: Sender,
        clock: Clock,
        wakeup: Wakeup,
    ) -> None:
        self.clock = clock
        self.store = store
        self.gateway = gateway
        self.specs = specs
        self.sender = sender
        self.wakeup = wakeup
        self.worker = Worker("companions", self.step, idle_seconds=60.0, wakeup=wakeup)
        self._rooms: set[str] = set()

    async def load(self) -> None:
        async with self.store.transaction() as tx:
            self._rooms = {room for _, room in await tx.companions() if room}

    def is_companion(self, room_id: str) -> bool:
        return room_id in self._rooms

    async def run(self) -> None:
        await self.worker.run()

    async def request(self, tx: Tx, demande: Demande, *, by: str) -> str | None:
        """Ask for the room (once); its ID when it exists already."""
        existing = await tx.companion_room(demande.id)
        if existing is not None:
            return existing
        await tx.request_companion(demande.id, by=by, now=self.clock.now())
        tx.after_commit(self.wakeup.set)
        return None

    async def on_event(self, room_id: str, event: Any) -> None:
        if isinstance(event, RoomMemberEvent) and event.state_key != self.specs.bot_user_id:
            self.wakeup.set()  # someone joined or was invited: the worker checks

    # ------------------------------------------------------------------ the worker
    async def step(self) -> None:
        async with self.store.transaction() as tx:
            rows = await tx.companions()
        for demande_id, room_id in rows:
            try:
                await self._one(demande_id, room_id)
            except Exception:
                log.exception("companion room of demande %d not reconciled", demande_id)

    async def _one(self, demande_id: int, room_id: str | None) -> None:
        async with self.store.transaction() as tx:
            demande = await tx.get_demande(demande_id)
            if demande is None or demande.room_id is None:
                return
            allowed = await allowed_in(tx, demande)
            wiped = demande_id in await tx.wiped_demande_ids()
        if wiped:
            return
        if room_id is None:
            room_id = await self._create(demande, sorted(allowed))
            return
        await self._reconcile(room_id, allowed)

    async def _create(self, demande: Demande, invite: Sequence[str]) -> str:
        body = self.specs.body(demande, invite)
        body["name"] = f"{self.specs.name(demande).split(' · ')[0]} · instructeurs"
        # Marked as a companion, never as a demande room (the opening's recovery looks
        # for those).
        body["initial_state"] = [
            e for e in body["initial_state"] if e["type"] != room_spec.DEMANDE_STATE_TYPE
        ] + [
            {
                "type": COMPANION_STATE_TYPE,
                "state_key": "",
                "content": {"reference": demande.reference},
            }
        ]
        room_id = await self.gateway.create_room(body)
        self._rooms.add(room_id)
        self.gateway.track_new_room(room_id, invited=list(invite))
        async with self.store.transaction() as tx:
            await tx.set_companion_room(demande.id, room_id)
            await tx.set_state(INVITED_KEY.format(room_id=room_id), json.dumps(sorted(invite)))
            await self.sender.enqueue(
                tx,
                txn_id=f"companion-welcome-{demande.reference}",
                room_id=room_id,
                content=mx.notice(WELCOME.format(reference=demande.reference)),
            )
        log.info("demande %s: companion room created", demande.reference)
        return room_id

    async def _reconcile(self, room_id: str, allowed: set[str]) -> None:
        members = await self.gateway.members(room_id)
        async with self.store.transaction() as tx:
            invited = set(
                json.loads(await tx.get_state(INVITED_KEY.format(room_id=room_id)) or "[]")
            )
        bot = self.specs.bot_user_id
        for user, membership in members.items():
            if user != bot and membership in ("join", "invite", "knock") and user not in allowed:
                await self.gateway.kick(room_id, user, "Réservé aux instructeurs de la demande.")
                invited.discard(user)
                log.warning("companion room %s: %s removed", room_id, user)
        for user in sorted(allowed - invited):
            if members.get(user) not in ("join", "invite"):
                await self.gateway.invite(room_id, user)
            invited.add(user)
        async with self.store.transaction() as tx:
            await tx.set_state(INVITED_KEY.format(room_id=room_id), json.dumps(sorted(invited)))
        await self.gateway.refresh_members(room_id)
        self.sender.flush_soon(room_id)
