"""Participants' cross-signing identities, pinned on first sight (trust on first use).

`DeviceTrust` asks `check` for every master key a `/keys/query` answer gives for a
user it is about to share room keys with. First sight: pinned, audited. The same
key: trusted. Another key (an identity reset by its owner... or by whoever holds
their password, or by a homeserver admin): not trusted, so none of their devices
gets a room key; the change is audited, and told once, in French, in each of their
demande rooms and to the operators. Only an operator's `!identite-accepter` (in the
admin room, audited) makes the new key the pinned one.

Notices are queued in the outbox and the outbox is woken, never flushed here: this
runs while a message is being sent (inside the outbox's own flush).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection

from bot.domain.model import Demande
from bot.matrix import content as mx
from bot.ports import ACCEPT_IDENTITY_COMMAND
from bot.services import outbox as outbox_mod
from bot.services.admin_room import ADMIN_ROOM_KEY
from bot.services.clock import Clock
from bot.store.crypto_tx import IdentityPin
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)


def _short(key: str) -> str:
    return f"{key[:8]}…"


def _tag(user_id: str, key: str) -> str:
    return hashlib.sha256(f"{user_id}\n{key}".encode()).hexdigest()[:16]


def room_notice_changed(name: str) -> str:
    return (
        f"Sécurité : l'identité de chiffrement de {name} a changé. Par précaution, le "
        "service ne transmet plus les clés de ce salon à ses appareils : cette personne "
        "ne peut plus lire les nouveaux messages. C'est normal après une réinitialisation "
        "(nouvel ordinateur, clé de récupération perdue) ; un opérateur du service doit "
        "alors la confirmer. Sinon, quelqu'un d'autre utilise peut-être son compte : ne lui "
        "envoyez rien par un autre moyen avant cette confirmation."
    )


def room_notice_accepted(name: str) -> str:
    return (
        f"L'identité de chiffrement de {name} a été confirmée par un opérateur : ses "
        "appareils vérifiés reçoivent de nouveau les clés de ce salon."
    )


def admin_notice_changed(name: str, user_id: str, old: str, new: str, references: list[str]) -> str:
    where = ", ".join(references) if references else "aucune demande en cours"
    return (
        f"Changement d'identité de chiffrement : {name} ({user_id}). Clé maîtresse "
        f"connue {_short(old)}, nouvelle clé {_short(new)}. Ses appareils ne reçoivent plus "
        f"les clés des salons. Demandes concernées : {where}. Vérifiez auprès de la "
        "personne, par un autre moyen (téléphone), qu'elle a bien réinitialisé son "
        f"identité, puis tapez : !{ACCEPT_IDENTITY_COMMAND} {user_id}"
    )


class IdentityPins:
    def __init__(
        self, *, store: Store, clock: Clock, bot_user_id: str, wake_outbox: Callable[[], None]
    ) -> None:
        self.store = store
        self.clock = clock
        self.bot_user_id = bot_user_id
        self.wake = wake_outbox
        self._trusted: dict[str, str] = {}  # user → pinned master key, checked this run

    async def check(self, user_id: str, master_key: str) -> bool:
        if self._trusted.get(user_id) == master_key:
            return True
        now = self.clock.now()
        told = False
        async with self.store.transaction() as tx:
            if await tx.pin_identity(user_id, master_key, now=now):
                await tx.audit(
                    "identity_pinned",
                    actor=self.bot_user_id,
                    details={"user": user_id, "master_key": master_key},
                    now=now,
                )
                pin = None
            else:
                pin = await tx.identity_pin(user_id)
            if pin is None or pin.master_key == master_key:
                if pin is not None and pin.pending_master_key is not None:
                    # Back to the known identity: nothing left to accept.
                    await tx.set_pending_identity(user_id, None, now=now)
                self._trusted[user_id] = master_key
                return True
            if pin.pending_master_key != master_key:
                await tx.set_pending_identity(user_id, master_key, now=now)
                await tx.audit(
                    "identity_changed",
                    actor=self.bot_user_id,
                    details={"user": user_id, "known": pin.master_key, "new": master_key},
                    now=now,
                )
                await self._tell_changed(tx, user_id, pin.master_key, master_key)
                told = True
        self._trusted.pop(user_id, None)
        if told:
            log.warning("cross-signing identity of %s changed: room keys withheld", user_id)
            self.wake()
        return False

    async def accept(self, user_id: str, *, actor: str) -> IdentityPin | None:
        """The pending identity becomes the pinned one; the previous pin, or None."""
        now = self.clock.now()
        async with self.store.transaction() as tx:
            previous = await tx.accept_identity(user_id, now=now)
            if previous is None:
                return None
            await tx.audit(
                "identity_accepted",
                actor=actor,
                details={
                    "user": user_id,
                    "previous": previous.master_key,
                    "accepted": previous.pending_master_key,
                },
                now=now,
            )
            name = await _name(tx, user_id)
            for demande in await _demandes(tx, user_id):
                await outbox_mod.enqueue(
                    tx,
                    txn_id=f"identity-ok-{_tag(user_id, str(previous.pending_master_key))}"
                    f"-{demande.id}",
                    room_id=_room(demande),
                    content=mx.notice(room_notice_accepted(name)),
                    now=now,
                )
        self._trusted.pop(user_id, None)
        self.wake()
        return previous

    async def _tell_changed(self, tx: Tx, user_id: str, old: str, new: str) -> None:
        now = self.clock.now()
        tag = _tag(user_id, new)
        name = await _name(tx, user_id)
        demandes = await _demandes(tx, user_id)
        for demande in demandes:
            await outbox_mod.enqueue(
                tx,
                txn_id=f"identity-changed-{tag}-{demande.id}",
                room_id=_room(demande),
                content=mx.notice(room_notice_changed(name)),
                now=now,
            )
        admin_room = await tx.get_state(ADMIN_ROOM_KEY)
        if admin_room:
            text = admin_notice_changed(name, user_id, old, new, [d.reference for d in demandes])
            await outbox_mod.enqueue(
                tx,
                txn_id=f"identity-changed-{tag}-admin",
                room_id=admin_room,
                content=mx.notice(text),
                now=now,
                recipients=await tx.operators(),
            )


def _room(demande: Demande) -> str:
    assert demande.room_id is not None  # `_demandes` keeps only those with a room
    return demande.room_id


async def _name(tx: Tx, user_id: str) -> str:
    agent = await tx.get_agent_by_matrix_id(user_id)
    if agent is None:
        return user_id
    name = f"{agent.first_name} {agent.last_name}".strip()
    return name or user_id


async def _demandes(tx: Tx, user_id: str) -> list[Demande]:
    """The open demandes where the user is an active participant, with a room."""
    agent = await tx.get_agent_by_matrix_id(user_id)
    if agent is None:
        return []
    found = []
    for demande in await tx.demandes_of_agent(agent.id):
        if demande.room_id is None or demande.creation_step != "ready":
            continue
        if user_id in {p.matrix_id for p in await tx.participants(demande.id)}:
            found.append(demande)
    return found


class IdentityAcceptance:
    """An operator's `!identite-accepter` (the `IdentityDecisions` port): the pin moves
    to the new identity, then the participant's devices are looked at again and get
    the room keys they missed meanwhile."""

    def __init__(
        self,
        *,
        pins: IdentityPins,
        invalidate: Callable[[Collection[str]], None],
        catch_up: Callable[[Collection[str]], Awaitable[None]],
    ) -> None:
        self._pins = pins
        self._invalidate = invalidate
        self._catch_up = catch_up

    async def accept(self, user_id: str, *, actor: str) -> bool:
        if await self._pins.accept(user_id, actor=actor) is None:
            return False
        self._invalidate([user_id])
        await self._catch_up([user_id])
        return True
