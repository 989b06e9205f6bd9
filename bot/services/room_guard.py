"""The guard of the demande rooms: membership equal to the ledger, protected state as the
bot set it, and the ledger's invitations actually sent.

The guard is level-triggered: whatever woke it, it compares the room's real membership
(asked of the homeserver) with the ledger and removes whoever is not in it. Running it
twice changes nothing, so it is safe to run again after a crash. Its work is queued in
the database (`guard_pending`, `pending_invites`) in the transaction that asked for it,
and done by its own worker, never inside another service's send or lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bot.domain import dossier as texts
from bot.domain import membership as rules
from bot.domain import room_spec
from bot.domain.model import Demande, Status
from bot.domain.retry import GiveUp, RetryPolicy, after_failure
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.ports import DemandeTx, Sender
from bot.services.clock import Clock
from bot.services.failures import database_unavailable, describe, homeserver_outage
from bot.services.room_specs import RoomSpecs
from bot.services.worker import Wakeup, Worker
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)
# State the bot itself rewrites as the demande moves on (the spaces service): an event
# of these sent by the bot is its own, even when already superseded.
BOT_OWNED_NAMING = frozenset({"m.room.name"})

# How many rooms the start-up check of protected state looks at concurrently.
STATE_CHECK_CONCURRENCY = 4


class RoomGuard:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        clock: Clock,
        specs: RoomSpecs,
        sender: Sender,
        invite_retry: RetryPolicy,
        wakeup: Wakeup,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.clock = clock
        self.specs = specs
        self.sender = sender
        self.invite_retry = invite_retry
        self.worker = Worker("guard", self._step, idle_seconds=60.0, wakeup=wakeup)

    @property
    def bot_user_id(self) -> str:
        return self.specs.bot_user_id

    def wake(self) -> None:
        self.worker.wake()

    async def run(self) -> None:
        await self.worker.run()

    # ------------------------------------------------------------------ requests
    async def request(self, tx: Tx, room_id: str, reason: str) -> None:
        """Ask for a membership check of this room once `tx` commits."""
        await tx.request_guard(room_id, reason, self.clock.now())
        tx.after_commit(self.wake)

    async def invite(self, tx: DemandeTx, room_id: str, users: Sequence[str]) -> None:
        """Queue invitations of participants already in the ledger (sent after the commit)."""
        now = self.clock.now()
        for user in users:
            await tx.add_pending_invite(room_id, user, now)
        if users:
            tx.after_commit(self.wake)

    async def _step(self) -> None:
        async with self.store.transaction() as tx:
            requests = await tx.guard_requests()
        for room_id, since in requests:
            try:
                await self.reconcile(room_id)
            except Exception as exc:
                if homeserver_outage(exc) or database_unavailable(exc):
                    raise
                # This room's problem stays with this room (and its request stays queued).
                log.exception("guard: room %s could not be checked", room_id)
                continue
            async with self.store.transaction() as tx:
                await tx.guard_done(room_id, since)
        await self.send_due_invites()

    # ------------------------------------------------------------------ membership
    async def authorised(self, tx: DemandeTx, demande: Demande) -> set[str]:
        return {p.matrix_id for p in await tx.participants(demande.id) if p.matrix_id} | {
            self.bot_user_id
        }

    async def reconcile(self, room_id: str) -> list[rules.Action]:
        """Make the room's membership match the ledger; returns what was done."""
        async with self.store.transaction() as tx:
            demande = await tx.get_demande_by_room(room_id)
            if demande is None:
                return []
            allowed = await self.authorised(tx, demande)
            offences = await tx.offences(room_id)
        members = await self.gateway.members(room_id)
        # `offences` counts past removals from this room: a second intrusion is a ban.
        actions: list[rules.Action] = [
            a
            for a in rules.reconcile(members, allowed, self.bot_user_id, offences)
            if not isinstance(a, rules.Unban)
        ]
        now = self.clock.now()
        for action in actions:
            banned = isinstance(action, rules.Ban)
            try:
                if banned:
                    await self.gateway.ban(room_id, action.user_id, action.reason)
                else:
                    await self.gateway.kick(room_id, action.user_id, action.reason)
            except MatrixError as exc:
                if homeserver_outage(exc):
                    raise
                log.warning("removal of %s refused: %s", action.user_id, exc.errcode)
                continue
            async with self.store.transaction() as tx:
                await tx.record_offence(room_id, action.user_id, now)
                await tx.audit(
                    "intruder_banned" if banned else "intruder_kicked",
                    actor=self.bot_user_id,
                    reference=demande.reference,
                    details={"user": action.user_id},
                    now=now,
                )
                await self.sender.enqueue(
                    tx,
                    txn_id=f"guard-{room_id}-{action.user_id}-{offences.get(action.user_id, 0)}",
                    room_id=room_id,
                    content=mx.notice(texts.intruder_removed(action.user_id, banned=banned)),
                )
        await self.gateway.refresh_members(room_id)
        # The room is clean: what waited for it can go.
        self.sender.flush_soon(room_id)
        return actions

    # ------------------------------------------------------------------ protected state
    async def on_foreign_state(self, demande: Demande, source: Mapping[str, Any]) -> bool:
        """A protected state event differs from what the bot set: undo it, then check the
        members (only a homeserver admin can do this). True if something was reverted."""
        etype = str(source.get("type"))
        state_key = str(source.get("state_key", ""))
        if etype in BOT_OWNED_NAMING and source.get("sender") == self.bot_user_id:
            # Our own rename, possibly of a status already past (two changes close
            # together): the spaces service names the room after each change.
            return False
        wanted = self._wanted(demande, etype, state_key)
        if wanted is None or not _drifted(etype, source.get("content") or {}, wanted):
            return False
        assert demande.room_id is not None
        now = self.clock.now()
        async with self.store.transaction() as tx:
            event_id = source.get("event_id")
            if isinstance(event_id, str) and not await tx.mark_processed(
                event_id, demande.room_id, now
            ):
                return False
            await self._revert_audit(tx, demande, etype, str(source.get("sender")))
            await self.request(tx, demande.room_id, "state_reverted")
        await self.gateway.put_state(demande.room_id, etype, wanted, state_key)
        log.warning(
            "demande %s: %s changed by %s, reverted", demande.reference, etype, source.get("sender")
        )
        return True

    async def check_protected_state(self, demande: Demande) -> list[str]:
        """Compare every protected state event with the canonical one, now (a change made
        while the bot was down, or lost in a sync gap); revert each drift. Returns the
        types reverted."""
        assert demande.room_id is not None
        reverted = []
        state = await self.gateway.room_state(demande.room_id)
        for (etype, state_key), wanted in self.specs.canonical_state(demande).items():
            current = state.get((etype, state_key))
            if current is not None and not _drifted(etype, current, wanted):
                continue
            async with self.store.transaction() as tx:
                await self._revert_audit(tx, demande, etype, "?")
                await self.request(tx, demande.room_id, "state_reverted")
            await self.gateway.put_state(demande.room_id, etype, wanted, state_key)
            reverted.append(etype)
        if reverted:
            log.warning("demande %s: %s reverted at check", demande.reference, reverted)
        return reverted

    async def check_open_rooms(self) -> int:
        """The level-triggered check of every open demande room (at start). Returns how
        many rooms had something reverted; a room's failure stays with that room."""
        async with self.store.transaction() as tx:
            demandes = [
                d
                for d in await tx.list_demandes()
                if d.room_id and d.creation_step == "ready" and d.status is not Status.CLOTUREE
            ]
        limit = asyncio.Semaphore(STATE_CHECK_CONCURRENCY)

        async def one(demande: Demande) -> bool:
            async with limit:
                try:
                    return bool(await self.check_protected_state(demande))
                except Exception as exc:
                    if database_unavailable(exc):
                        raise
                    log.warning(
                        "demande %s: state check postponed (%s)", demande.reference, describe(exc)
                    )
                    return False

        results = await asyncio.gather(*(one(d) for d in demandes))
        return sum(results)

    def _wanted(self, demande: Demande, etype: str, state_key: str) -> dict[str, Any] | None:
        if etype not in room_spec.PROTECTED_STATE_EVENTS:
            return None
        return self.specs.canonical_state(demande).get((etype, state_key))

    async def _revert_audit(self, tx: Tx, demande: Demande, etype: str, actor: str) -> None:
        await tx.audit(
            "state_reverted",
            actor=actor,
            reference=demande.reference,
            details={"type": etype},
            now=self.clock.now(),
        )

    # ------------------------------------------------------------------ invitations
    async def send_due_invites(self, room_id: str | None = None) -> int:
        """Send the queued invitations that are due; returns how many were sent."""
        now = self.clock.now()
        async with self.store.transaction() as tx:
            due = await tx.due_invites(now, room_id)
        sent = 0
        members: dict[str, dict[str, str]] = {}
        for item in due:
            if item.room_id not in members:
                members[item.room_id] = await self.gateway.members(item.room_id)
            try:
                if members[item.room_id].get(item.user_id) not in ("join", "invite"):
                    if not self.specs.may_take_part(item.user_id):
                        raise MatrixError(None, "APLUS_SERVER_NOT_ALLOWED", "server not allowed")
                    await self.gateway.invite(item.room_id, item.user_id)
                    sent += 1
                self.gateway.note_invited(item.room_id, item.user_id)
            except Exception as exc:
                if homeserver_outage(exc) or database_unavailable(exc):
                    raise
                await self._invite_failed(item.room_id, item.user_id, item.attempts, exc)
                continue
            async with self.store.transaction() as tx:
                await tx.invite_done(item.room_id, item.user_id)
        return sent

    async def _invite_failed(
        self, room_id: str, user_id: str, attempts: int, exc: Exception
    ) -> None:
        now = self.clock.now()
        never = isinstance(exc, MatrixError) and exc.errcode == "APLUS_SERVER_NOT_ALLOWED"
        outcome = (
            GiveUp(attempts + 1)
            if never
            else after_failure(self.invite_retry, attempts, now, outage=False)
        )
        async with self.store.transaction() as tx:
            if not isinstance(outcome, GiveUp):
                await tx.invite_retry_later(
                    room_id, user_id, attempts=outcome.attempts, error=describe(exc), at=outcome.at
                )
                log.warning(
                    "invite of %s to %s refused (%s); later", user_id, room_id, describe(exc)
                )
                return
            await tx.invite_done(room_id, user_id)
            demande = await tx.get_demande_by_room(room_id)
            await tx.audit(
                "invite_failed",
                actor=self.bot_user_id,
                reference=demande.reference if demande else None,
                details={"user": user_id, "error": describe(exc)},
                now=now,
            )
            if demande is not None:
                await self.sender.enqueue(
                    tx,
                    txn_id=f"invite-failed-{room_id}-{user_id}",
                    room_id=room_id,
                    content=mx.notice(texts.invite_failed(user_id, server_refused=never)),
                )
        log.error("invite of %s to %s given up (%s)", user_id, room_id, describe(exc))


def _drifted(etype: str, current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Does the room's state differ from ours in anything that matters?

    Synapse merges our power levels over its defaults, so extra keys are not drift.
    """
    if etype == "m.room.power_levels":
        return rules.power_levels_drift(current, wanted)
    return any(current.get(k) != v for k, v in wanted.items())
