"""Life in a demande room: the room stays closed, commands, status, dossier for newcomers.

The guard is level-triggered: whatever the event that woke it, it compares the
room's real membership (asked of the homeserver) with the ledger and removes
whoever is not in it. Running it twice changes nothing, so it is safe to run
again after a crash (rooms to check are recorded in the database first).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nio import MegolmEvent, RedactionEvent, RoomEncryptedMedia, RoomMemberEvent, RoomMessageText

from bot.domain import dossier as texts
from bot.domain import membership as rules
from bot.domain import room_spec
from bot.domain import status as status_rules
from bot.domain.model import Demande, Usefulness
from bot.domain.policies import MembershipRules, Policies
from bot.domain.reference import room_name
from bot.matrix import attachments as files
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.matrix.gateway import MatrixGateway
from bot.services import outbox as outbox_mod
from bot.services.clock import Clock
from bot.services.directory_view import dossier_content
from bot.services.opening import Incoming
from bot.store.db import Store

if TYPE_CHECKING:
    from bot.services.undecryptable import Undecryptables

log = logging.getLogger(__name__)

PENDING_GUARD_KEY = "guard.pending_rooms"
PENDING_INVITES_KEY = "invites.pending"


class DemandeRooms:
    # Set by the app: keeps the events the bot cannot decrypt until their key arrives.
    undecryptable: Undecryptables | None = None

    def __init__(
        self,
        *,
        store: Store,
        gateway: MatrixGateway,
        policies: Policies,
        clock: Clock,
        bot_user_id: str,
        allowed_servers: Sequence[str],
        room_version: str,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.policies = policies
        self.clock = clock
        self.bot_user_id = bot_user_id
        self.allowed_servers = tuple(allowed_servers)
        self.room_version = room_version
        self.outbox: outbox_mod.Outbox | None = None
        self.email: Any = None  # bridge.outbound.EmailBridge when the email bridge is on

    # ------------------------------------------------------------ the ledger
    async def authorised(self, tx: Any, demande_id: int) -> set[str]:
        return {p.matrix_id for p in await tx.participants(demande_id) if p.matrix_id} | {
            self.bot_user_id
        }

    async def recipients(self, room_id: str) -> set[str] | None:
        """Who may receive the room key of the next message; None if not a demande room.

        Also the check done before every send: an unauthorised member is removed first.
        """
        async with self.store.transaction() as tx:
            demande = await tx.get_demande_by_room(room_id)
            if demande is None:
                return None
            allowed = await self.authorised(tx, demande.id)
        present = self.gateway.present_members(room_id)
        if present is None:
            present = set((await self.gateway.refresh_members(room_id)).users)
        if present - allowed:
            await self.reconcile(room_id)
        return allowed

    # ---------------------------------------------------------------- events
    async def on_event(self, demande: Demande, event: Any) -> None:
        if isinstance(event, RoomMemberEvent):
            await self._on_member(demande, event)
        elif isinstance(event, RoomMessageText):
            await self._on_text(demande, event)
        elif self.oversized_attachment(event):
            await self.refuse_attachment(demande, event)
        elif self.email is not None and isinstance(event, RoomEncryptedMedia):
            await self.email.on_room_file(demande, _room(demande), event)
        elif self.email is not None and isinstance(event, RedactionEvent):
            await self.email.on_redaction_event(demande, _room(demande), event)
        elif isinstance(event, MegolmEvent):
            # Not marked processed: once its key arrives it comes back here decrypted.
            await self.on_undecryptable(_room(demande), event, reference=demande.reference)
        else:
            source = getattr(event, "source", None) or {}
            # Not filtered on the sender: Synapse's make_room_admin writes its power-level
            # change *as the room creator*, i.e. as the bot itself.
            if "state_key" in source:
                await self._on_foreign_state(demande, source)

    async def on_undecryptable(
        self, room_id: str, event: MegolmEvent, *, reference: str | None
    ) -> None:
        """Kept until its key arrives, then handled as if it had just come (never dropped)."""
        if self.undecryptable is None:
            log.error("event %s in %s undecryptable, and nothing keeps it", event.event_id, room_id)
            return
        await self.undecryptable.record(room_id, event, reference=reference)

    def oversized_attachment(self, event: Any) -> bool:
        """An attachment whose declared size is over the service's limit."""
        content = (getattr(event, "source", None) or {}).get("content")
        if not isinstance(content, Mapping) or not files.is_attachment(content):
            return False
        size = files.declared_size(content)
        return size is not None and size > self.gateway.max_attachment_bytes

    async def refuse_attachment(self, demande: Demande, event: Any) -> None:
        """Tell the room, once, that the file was not accepted (nothing of it is kept)."""
        size = files.declared_size(event.source["content"])
        limit = self.gateway.max_attachment_bytes
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
        await self._flush(_room(demande))

    async def _on_member(self, demande: Demande, event: RoomMemberEvent) -> None:
        user = event.state_key
        if user == self.bot_user_id:
            return
        now = self.clock.now()
        check = False
        repost_for: str | None = None
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, _room(demande), now):
                return
            allowed = await self.authorised(tx, demande.id)
            if event.membership in ("join", "invite", "knock") and user not in allowed:
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
                await self._mark_pending(tx, _room(demande))
                check = True
            elif event.membership == "join":
                kinds = {p.matrix_id: p.kind for p in await tx.participants(demande.id)}
                await tx.audit("joined", actor=user, reference=demande.reference, now=now)
                # Invitees of the opening got the room key of the dossier; those who came
                # later cannot read it, so it is posted again for them.
                if kinds.get(user) == "invite" and demande.creation_step == "ready":
                    repost_for = user
                    await self._enqueue_dossier(tx, demande, now, txn=f"dossier-{event.event_id}")
            elif event.membership in ("leave", "ban") and event.sender == user:
                await tx.audit("left", actor=user, reference=demande.reference, now=now)
        if check:
            await self.reconcile(_room(demande))
        if repost_for:
            log.info("demande %s: dossier posted again for a newcomer", demande.reference)
            await self._flush(_room(demande))

    async def _on_foreign_state(self, demande: Demande, source: Mapping[str, Any]) -> None:
        """The room's state differs from what the bot set (only a homeserver admin can): undo it."""
        etype = str(source.get("type"))
        if etype not in room_spec.PROTECTED_STATE_EVENTS and etype != "m.room.power_levels":
            return
        canonical = self._canonical_state(demande)
        wanted = canonical.get((etype, str(source.get("state_key", ""))))
        if wanted is None or not _drifted(etype, source.get("content") or {}, wanted):
            return
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(str(source.get("event_id")), _room(demande), now):
                return
            await tx.audit(
                "state_reverted",
                actor=str(source.get("sender")),
                reference=demande.reference,
                details={"type": etype},
                now=now,
            )
            await self._mark_pending(tx, _room(demande))
        await self.gateway.put_state(
            _room(demande), etype, wanted, str(source.get("state_key", ""))
        )
        log.warning(
            "demande %s: %s changed by %s, reverted",
            demande.reference,
            etype,
            source.get("sender"),
        )
        await self.reconcile(_room(demande))

    def _canonical_state(self, demande: Demande) -> dict[tuple[str, str], dict[str, Any]]:
        names = [self.policies.organisations[o].name for o in demande.organisations]
        body = room_spec.create_room_body(
            reference=demande.reference,
            name=room_name(demande.reference, names, demande.territoire),
            bot_user_id=self.bot_user_id,
            invitees=[],
            allowed_servers=self.allowed_servers,
            room_version=self.room_version,
        )
        state = {(e["type"], e.get("state_key", "")): e["content"] for e in body["initial_state"]}
        state[("m.room.power_levels", "")] = body["power_level_content_override"]
        state[("m.room.name", "")] = {"name": body["name"]}
        return state

    # ----------------------------------------------------------------- guard
    async def _mark_pending(self, tx: Any, room_id: str) -> None:
        pending = set(json.loads(await tx.get_state(PENDING_GUARD_KEY) or "[]"))
        pending.add(room_id)
        await tx.set_state(PENDING_GUARD_KEY, json.dumps(sorted(pending)))

    async def reconcile_pending(self) -> None:
        async with self.store.transaction() as tx:
            pending = json.loads(await tx.get_state(PENDING_GUARD_KEY) or "[]")
        for room_id in pending:
            await self.reconcile(room_id)

    async def reconcile(self, room_id: str) -> list[rules.Action]:
        """Make the room's membership match the ledger; returns what was done."""
        async with self.store.transaction() as tx:
            demande = await tx.get_demande_by_room(room_id)
            if demande is None:
                return []
            allowed = await self.authorised(tx, demande.id)
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
            if isinstance(action, rules.Ban):
                await self.gateway.ban(room_id, action.user_id, action.reason)
            else:
                try:
                    await self.gateway.kick(room_id, action.user_id, action.reason)
                except MatrixError as exc:
                    if exc.transient:
                        raise
                    log.warning("kick of %s refused: %s", action.user_id, exc.errcode)
                    continue
            banned = isinstance(action, rules.Ban)
            async with self.store.transaction() as tx:
                await tx.record_offence(room_id, action.user_id, now)
                await tx.audit(
                    "intruder_banned" if banned else "intruder_kicked",
                    actor=self.bot_user_id,
                    reference=demande.reference,
                    details={"user": action.user_id},
                    now=now,
                )
                await self._notice(
                    tx,
                    demande,
                    texts.intruder_removed(action.user_id, banned=banned),
                    txn=f"guard-{room_id}-{action.user_id}-{offences.get(action.user_id, 0)}",
                )
        await self.gateway.refresh_members(room_id)
        async with self.store.transaction() as tx:
            pending = set(json.loads(await tx.get_state(PENDING_GUARD_KEY) or "[]"))
            pending.discard(room_id)
            await tx.set_state(PENDING_GUARD_KEY, json.dumps(sorted(pending)))
        if actions:
            await self._flush(room_id)
        return actions

    # ------------------------------------------------------------- messages
    async def _on_text(self, demande: Demande, event: RoomMessageText) -> None:
        from bot.commands import room as room_commands

        await room_commands.handle(self, demande, Incoming.of(_room(demande), event))

    async def _notice(
        self, tx: Any, demande: Demande, text: str, *, txn: str, html: str | None = None
    ) -> None:
        await outbox_mod.enqueue(
            tx,
            txn_id=txn,
            room_id=_room(demande),
            content=mx.notice(text, html),
            now=self.clock.now(),
        )

    async def _enqueue_dossier(self, tx: Any, demande: Demande, now: Any, *, txn: str) -> None:
        current = await tx.get_demande(demande.id)
        content = await dossier_content(
            tx,
            demande,
            self.policies,
            status=current.status if current else demande.status,
            repost=True,
        )
        await outbox_mod.enqueue(tx, txn_id=txn, room_id=_room(demande), content=content, now=now)

    def membership_rules(self) -> MembershipRules:
        rules_ = self.policies.membership
        for server in self.allowed_servers:
            rules_ = rules_.with_homeserver(server)
        return rules_

    async def invite_users(self, demande: Demande, users: Sequence[str]) -> None:
        """Invite participants already recorded in the ledger (so the guard lets them in)."""
        async with self.store.transaction() as tx:
            pending = set(json.loads(await tx.get_state(PENDING_INVITES_KEY) or "[]"))
            pending |= {f"{_room(demande)} {u}" for u in users}
            await tx.set_state(PENDING_INVITES_KEY, json.dumps(sorted(pending)))
        await self.invite_pending()

    async def invite_pending(self) -> None:
        """Invitations recorded but maybe not sent (crash): send them, idempotently."""
        async with self.store.transaction() as tx:
            pending = sorted(json.loads(await tx.get_state(PENDING_INVITES_KEY) or "[]"))
        done = set()
        for item in pending:
            room_id, user = item.split(" ", 1)
            members = await self.gateway.members(room_id)
            if members.get(user) not in ("join", "invite"):
                try:
                    await self.gateway.invite(room_id, user)
                except MatrixError as exc:
                    if exc.guard_unavailable:
                        # The homeserver guard could not ask our ledger in time: the
                        # invite stays pending for the next recovery round.
                        log.warning("invite of %s deferred: guard unavailable", user)
                        continue
                    if exc.transient:
                        raise
                    log.warning("invite of %s refused: %s", user, exc.errcode)
            room = self.gateway.client.rooms.get(room_id)
            if room is not None and user not in room.users:
                room.add_member(user, None, None, invited=True)
                self.gateway.client.invalidate_outbound_session(room_id)
            done.add(item)
        async with self.store.transaction() as tx:
            pending_now = set(json.loads(await tx.get_state(PENDING_INVITES_KEY) or "[]"))
            await tx.set_state(PENDING_INVITES_KEY, json.dumps(sorted(pending_now - done)))

    async def flush(self, room_id: str) -> None:
        await self._flush(room_id)

    async def _flush(self, room_id: str) -> None:
        assert self.outbox is not None
        try:
            await self.outbox.flush(room_id)
        except MatrixError as exc:
            log.warning("room %s: messages queued, homeserver unavailable: %s", room_id, exc)
            self.outbox.wake()

    # ------------------------------------------------------- status changes
    async def apply_status(
        self,
        tx: Any,
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
            if self.email is not None and result.status != current.status:
                await self.email.on_status(
                    tx, demande, old=current.status, new=result.status, actor=actor, key=txn
                )
            if result.notice and announce:
                await self._notice(tx, demande, result.notice, txn=f"status-{txn}")
        return result


def _room(demande: Demande) -> str:
    """The room of a demande that has one (every demande the room handlers see)."""
    assert demande.room_id is not None
    return demande.room_id


def _drifted(etype: str, current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Does the room's state differ from ours in anything that matters?

    Synapse merges our power levels over its defaults, so extra keys are not drift.
    """
    if etype == "m.room.power_levels":
        return rules.power_levels_drift(current, wanted)
    return any(current.get(k) != v for k, v in wanted.items())
