"""Events whose handling failed: kept, retried on their own, given up after a budget.

A failure caused by one event (its file's media cannot be fetched, an unexpected value,
a bug it meets) never holds back the sync position nor any other event: the event is
recorded here (sealed at rest, as it was handled), tried again with a doubling delay,
and after its budget given up — audited, and told in the room when it was a
participant's message. An outage of the homeserver is not the event's fault: it waits
without using its budget.
"""

from __future__ import annotations

import logging
from typing import Any

from nio import RoomMessage

from bot.commands.framework import new_error_reference
from bot.domain import dossier as texts
from bot.domain.retry import GiveUp, RetryPolicy, after_failure
from bot.matrix import content as mx
from bot.matrix.events import parse_stored
from bot.ports import Sender
from bot.services.clock import Clock
from bot.services.failures import describe, homeserver_outage
from bot.store.db import Store

log = logging.getLogger(__name__)

FILE_MSGTYPES = ("m.file", "m.image", "m.video", "m.audio")


class EventRetries:
    def __init__(
        self, *, store: Store, clock: Clock, sender: Sender, policy: RetryPolicy, bot_user_id: str
    ) -> None:
        self.store = store
        self.clock = clock
        self.sender = sender
        self.policy = policy
        self.bot_user_id = bot_user_id

    async def failed(self, room_id: str, event: Any, exc: BaseException) -> None:
        """Record one more failure of `event`; give it up once its budget is spent."""
        event_id = getattr(event, "event_id", None)
        source = getattr(event, "source", None)
        if not isinstance(event_id, str) or not isinstance(source, dict):
            log.error("an event without ID failed in %s (%s): dropped", room_id, describe(exc))
            return
        now = self.clock.now()
        outage = homeserver_outage(exc)
        async with self.store.transaction() as tx:
            before = await tx.event_failure_count(event_id)
            outcome = after_failure(self.policy, before, now, outage=outage)
            await tx.record_event_failure(
                event_id=event_id,
                room_id=room_id,
                source=source,
                decrypted=bool(getattr(event, "decrypted", False)),
                error=describe(exc),
                outcome=outcome,
                now=now,
            )
            if isinstance(outcome, GiveUp):
                reference = new_error_reference()
                demande = await tx.get_demande_by_room(room_id)
                await tx.audit(
                    "event_given_up",
                    actor=str(getattr(event, "sender", "?")),
                    reference=demande.reference if demande else None,
                    details={
                        "event_id": event_id,
                        "room_id": room_id,
                        "error": describe(exc),
                        "attempts": outcome.attempts,
                        "ref": reference,
                    },
                    now=now,
                )
                if demande is not None and demande.room_id and self._tell_room(event):
                    sender = await tx.get_agent_by_matrix_id(str(event.sender))
                    name = sender.display_name if sender else str(event.sender)
                    await self.sender.enqueue(
                        tx,
                        txn_id=f"given-up-{event_id}",
                        room_id=demande.room_id,
                        content=mx.notice(
                            texts.event_given_up(name, reference, is_file=_is_file(event))
                        ),
                    )
        if isinstance(outcome, GiveUp):
            log.error(
                "event %s in %s given up after %d failures (%s)",
                event_id,
                room_id,
                outcome.attempts,
                describe(exc),
                exc_info=exc,
            )
        else:
            log.warning(
                "event %s in %s failed (%s); retry at %s",
                event_id,
                room_id,
                describe(exc),
                outcome.at.isoformat(timespec="seconds"),
                exc_info=None if outage else exc,
            )

    def _tell_room(self, event: Any) -> bool:
        """A participant's message: they should know it was not taken into account."""
        return isinstance(event, RoomMessage) and getattr(event, "sender", None) != (
            self.bot_user_id
        )

    async def due(self) -> list[tuple[str, Any]]:
        """The events to try again now, as (room ID, event) rebuilt as nio gave them."""
        async with self.store.transaction() as tx:
            retries = await tx.due_event_retries(self.clock.now())
        return [(item.room_id, parse_stored(item.source, item.decrypted)) for item in retries]

    async def seconds_until_due(self) -> float | None:
        """How long until the next retry is due (0 if one is due now), None if none waits."""
        async with self.store.transaction() as tx:
            at = await tx.next_event_retry_at()
        if at is None:
            return None
        return max(0.0, (at - self.clock.now()).total_seconds())

    async def done(self, event_id: str) -> None:
        async with self.store.transaction() as tx:
            await tx.event_retry_done(event_id, self.clock.now())


def _is_file(event: Any) -> bool:
    content = (getattr(event, "source", None) or {}).get("content")
    return isinstance(content, dict) and content.get("msgtype") in FILE_MSGTYPES
