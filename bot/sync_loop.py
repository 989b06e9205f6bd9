"""The sync loop: our own position, saved only after every event was handled or set aside.

nio would save its sync token *before* our callbacks run, so a crash would skip
events. We keep the token in our database and write it after the batch is
handled; each handler is idempotent (keyed on the event ID), so a batch seen
twice after a crash is handled once.

Faults stay with what caused them. An event whose handling fails is recorded for a
retry of its own (`EventRetries`) and the batch goes on; only the database being
unavailable (nothing can be recorded) or `/sync` itself failing holds the batch back.
The events of different rooms are handled concurrently (bounded), those of one room in
order, so that one slow room does not delay the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from nio import (
    InviteMemberEvent,
    MegolmEvent,
    RoomMemberEvent,
    RoomMessageNotice,
    RoomMessageText,
    SyncResponse,
)

from bot.domain.lease import LeaseLost
from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.services.event_retries import EventRetries
from bot.services.failures import database_unavailable, describe, stop_requested
from bot.services.undecryptable import Undecryptables
from bot.store.db import Store

log = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync.next_batch"  # noqa: S105 (a key name)
LONG_POLL_MS = 30_000
ROOM_CONCURRENCY = 8

Handler = Callable[[str, Any], Awaitable[None]]
InviteHandler = Callable[[str, list[Any]], Awaitable[None]]


class EventRouter:
    """Sends each event to its use case; a failure stays with the event that caused it."""

    def __init__(
        self,
        *,
        bot_user_id: str,
        on_invite: InviteHandler,
        on_room_event: Handler,
        retries: EventRetries,
        concurrency: int = ROOM_CONCURRENCY,
    ) -> None:
        self.bot_user_id = bot_user_id
        self.on_invite = on_invite
        self.on_room_event = on_room_event
        self.retries = retries
        self.concurrency = concurrency

    async def handle(
        self, resp: SyncResponse, missed: Mapping[str, list[Any]] | None = None
    ) -> None:
        """Handle a batch; `missed`: per room, the events a limited timeline left out
        (oldest first), handled before the batch's own."""
        for room_id, info in resp.rooms.invite.items():
            try:
                await self.on_invite(room_id, list(info.invite_state))
            except Exception as exc:
                if database_unavailable(exc):
                    raise
                # An invitation comes back with the next sync while it stands.
                log.warning("invitation to %s not handled yet (%s)", room_id, describe(exc))
        rooms: dict[str, list[tuple[Any, bool]]] = {}
        for room_id, info in resp.rooms.join.items():
            # State in the `state` block changed in a gap before the timeline (a limited
            # sync): it is checked like the timeline's, first.
            gap = list((missed or {}).get(room_id, ()))
            seen = {getattr(e, "event_id", None) for e in gap}
            state = [e for e in info.state if getattr(e, "event_id", None) not in seen]
            events = [(e, False) for e in (*gap, *state, *info.timeline.events)]
            if events:
                rooms[room_id] = events
        await self.handle_rooms(rooms)

    async def handle_events(
        self, events: Iterable[tuple[str, Any]], *, retried: bool = False
    ) -> list[str]:
        """Handle (room ID, event) pairs outside a sync response (late decrypted, retried).

        Returns the IDs of the events handled successfully.
        """
        rooms: dict[str, list[tuple[Any, bool]]] = {}
        for room_id, event in events:
            rooms.setdefault(room_id, []).append((event, retried))
        return await self.handle_rooms(rooms)

    async def handle_rooms(self, rooms: dict[str, list[tuple[Any, bool]]]) -> list[str]:
        limit = asyncio.Semaphore(self.concurrency)
        handled: list[str] = []

        async def one_room(room_id: str, events: list[tuple[Any, bool]]) -> None:
            async with limit:
                for event, retried in events:
                    if await self._guarded(room_id, event, retried=retried):
                        handled.append(str(getattr(event, "event_id", "")))

        async with asyncio.TaskGroup() as tasks:
            for room_id, events in rooms.items():
                tasks.create_task(one_room(room_id, events), name=f"room {room_id}")
        return handled

    async def _guarded(self, room_id: str, event: Any, *, retried: bool) -> bool:
        sender = getattr(event, "sender", None)
        if sender == self.bot_user_id and not _is_state(event):
            return True
        try:
            await self.on_room_event(room_id, event)
        except Exception as exc:
            if database_unavailable(exc):
                raise  # the whole batch is retried: nothing can even be recorded
            # The event's own failure: kept for a retry of its own; the others go on.
            await self.retries.failed(room_id, event, exc)
            return False
        if retried:
            await self.retries.done(str(getattr(event, "event_id", "")))
        return True


def _is_state(event: Any) -> bool:
    source = getattr(event, "source", None) or {}
    return "state_key" in source


def classify(event: Any) -> str:
    """A short name for logs and dispatch; never the content."""
    if isinstance(event, RoomMemberEvent):
        return "member"
    if isinstance(event, RoomMessageText):
        return "text"
    if isinstance(event, RoomMessageNotice):
        return "notice"
    if isinstance(event, MegolmEvent):
        return "undecryptable"
    if isinstance(event, InviteMemberEvent):
        return "invite_member"
    source = getattr(event, "source", None) or {}
    return str(source.get("type", type(event).__name__))


class SyncLoop:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        router: EventRouter,
        undecryptables: Undecryptables,
        retries: EventRetries,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.router = router
        self.undecryptables = undecryptables
        self.retries = retries
        self.synced = asyncio.Event()

    async def _handle(self, resp: SyncResponse, since: str | None) -> None:
        await self.router.handle(resp, await self._missed(resp, since))
        try:
            await self.gateway.after_sync()
        except MatrixError as exc:
            # Key uploads, queries and claims are tried again after the next sync.
            log.warning("crypto housekeeping postponed: %s", exc)
        # Events whose key came with this batch, then events due for a retry.
        late = await self.undecryptables.after_sync()
        for room_id, event in late:
            await self.router.handle_events([(room_id, event)])
            await self.undecryptables.handled(room_id, event.event_id)
        await self.router.handle_events(await self.retries.due(), retried=True)
        async with self.store.transaction() as tx:
            await tx.set_state(SYNC_TOKEN_KEY, resp.next_batch)

    async def _missed(self, resp: SyncResponse, since: str | None) -> dict[str, list[Any]]:
        """A room whose timeline came back limited (more new events than the filter's
        limit: after an outage, a stop, a burst) has a gap: read it back, so that no
        event is skipped. Never on the first sync of an account (no `since`)."""
        if since is None:
            return {}
        missed: dict[str, list[Any]] = {}
        for room_id, info in resp.rooms.join.items():
            timeline = info.timeline
            if timeline.limited and timeline.prev_batch:
                missed[room_id] = await self.gateway.missed_events(
                    room_id, timeline.prev_batch, since
                )
                log.info("room %s: %d event(s) read back from a gap", room_id, len(missed[room_id]))
        return missed

    async def _timeout(self, first: bool) -> int:
        """The long-poll's wait: shorter when a retry falls due before it would end."""
        if first:
            return 0
        due = await self.retries.seconds_until_due()
        if due is None:
            return LONG_POLL_MS
        return int(min(LONG_POLL_MS, due * 1000 + 100))

    async def run(self) -> None:
        async with self.store.transaction() as tx:
            since = await tx.get_state(SYNC_TOKEN_KEY)
        first = True
        delay = 1.0
        while True:
            try:
                resp = await self.gateway.sync(since=since, timeout_ms=await self._timeout(first))
                handling = asyncio.ensure_future(self._handle(resp, since))
                try:
                    await asyncio.shield(handling)
                except asyncio.CancelledError:
                    # A clean stop never leaves a batch half-handled (a kill -9 can;
                    # idempotent handlers cover that case).
                    await _finish_before_stopping(handling)
                    raise
                since = resp.next_batch
                if first:
                    log.info("first sync handled: the service is ready")
                first = False
                delay = 1.0
                self.synced.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop_requested():
                    # The stop came while this failed (a rollback on a busy or lost
                    # database took the place of the cancellation): no failure to
                    # retry, the stop goes on.
                    log.warning("sync: stopping (%s)", describe(exc))
                    raise asyncio.CancelledError from exc
                if isinstance(exc, MatrixError):
                    log.warning("sync failed (%s); retry in %.0f s", exc, delay)
                elif isinstance(exc, LeaseLost):
                    # Not the active bot for now (bot.services.lease): nothing is fetched.
                    log.warning("sync paused: the lease is not held; retry in %.0f s", delay)
                else:
                    # The database is down: do not advance, try the batch again.
                    log.exception("handling a sync batch failed; retry in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


async def _finish_before_stopping(handling: asyncio.Future[None]) -> None:
    """The stop waits for the batch in hand; whatever becomes of it, the stop goes on
    (a batch that failed is fetched again at the next start: its token is not saved)."""
    try:
        await handling
    except Exception as exc:
        log.warning("sync: the batch in hand at the stop failed (%s)", describe(exc))
