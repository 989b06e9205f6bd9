"""Telling a participant, once per session, why that session reads nothing.

When the bot withholds a room key from a session of an authorised participant
because its owner did not verify it (`m.unverified`), the person is told in French
what happened, why and what to do. Where: in the demande room itself, in clear
(`m.notice`, not encrypted), because an unverified session can decrypt nothing the
service sends, and that room is where the person sees the messages they cannot
read. In clear means the homeserver stores it readable: it says only what the
homeserver already knows (the account, the session's ID, that it is not signed),
never the usager's data nor the session's display name; the account is mentioned
(`m.mentions`) so that only they are notified. Once per session, whatever the room
(recorded in `device_notices`), audited.

Not for a participant whose cross-signing identity changed and waits for an
operator (`bot.services.identity_pins`): verifying would not help them, and their
rooms were told already.

Queued and the outbox woken, never flushed here: this runs while a message is
being sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from bot.domain.key_sharing import unverified_session_notice
from bot.matrix import content as mx
from bot.services import outbox as outbox_mod
from bot.services.clock import Clock
from bot.store.db import Store

log = logging.getLogger(__name__)


class UnverifiedSessionNotices:
    def __init__(
        self, *, store: Store, clock: Clock, bot_user_id: str, wake_outbox: Callable[[], None]
    ) -> None:
        self.store = store
        self.clock = clock
        self.bot_user_id = bot_user_id
        self.wake = wake_outbox
        self._told: set[tuple[str, str]] = set()  # this run's, to spare the database

    async def withheld(self, room_id: str, sessions: Collection[tuple[str, str]]) -> None:
        """Sessions (user ID, device ID) just refused a key of `room_id` as unverified."""
        todo = sorted(set(sessions) - self._told)
        if not todo:
            return
        now = self.clock.now()
        told = 0
        async with self.store.transaction() as tx:
            for user_id, device_id in todo:
                pin = await tx.identity_pin(user_id)
                if pin is not None and pin.pending_master_key is not None:
                    continue  # an identity change: an operator decides, not a verification
                self._told.add((user_id, device_id))
                if not await tx.mark_device_told(user_id, device_id, room_id=room_id, now=now):
                    continue
                body, html = unverified_session_notice(user_id, device_id)
                content = mx.notice(body, html, unverified_session=device_id)
                content["m.mentions"] = {"user_ids": [user_id]}
                await outbox_mod.enqueue(
                    tx,
                    txn_id=f"unverified-{user_id}-{device_id}",
                    room_id=room_id,
                    content=content,
                    now=now,
                    encrypted=False,
                )
                await tx.audit(
                    "unverified_session_told",
                    actor=self.bot_user_id,
                    details={"user": user_id, "device": device_id, "room_id": room_id},
                    now=now,
                )
                told += 1
        if told:
            log.info("room %s: %d unverified session(s) told why they get no key", room_id, told)
            self.wake()
