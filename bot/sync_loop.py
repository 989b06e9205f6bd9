"""The sync loop: our own position, saved only after every event was handled.

nio would save its sync token *before* our callbacks run, so a crash would skip
events. We keep the token in our database and write it after the batch is
handled; each handler is idempotent (keyed on the event ID), so a batch seen
twice after a crash is handled once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nio import (
    InviteMemberEvent,
    MegolmEvent,
    RoomMemberEvent,
    RoomMessageNotice,
    RoomMessageText,
    SyncResponse,
)
from sqlalchemy.exc import InterfaceError, OperationalError

from bot.matrix.errors import MatrixError
from bot.matrix.gateway import MatrixGateway
from bot.store.db import Store

log = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync.next_batch"  # noqa: S105 (a key name)
LONG_POLL_MS = 30_000

Handler = Callable[[str, Any], Awaitable[None]]


class EventRouter:
    """Sends each event to the right use case. Unknown or odd events are logged, never fatal."""

    def __init__(
        self,
        *,
        bot_user_id: str,
        on_invite: Callable[[str, list[Any]], Awaitable[None]],
        on_room_event: Handler,
    ) -> None:
        self.bot_user_id = bot_user_id
        self.on_invite = on_invite
        self.on_room_event = on_room_event

    async def handle(self, resp: SyncResponse) -> None:
        for room_id, info in resp.rooms.invite.items():
            await self.on_invite(room_id, list(info.invite_state))
        for room_id, info in resp.rooms.join.items():
            # State in the `state` block happened in a gap before the timeline (limited sync):
            # membership changes there must be checked too.
            for event in info.state:
                if isinstance(event, RoomMemberEvent):
                    await self._guarded(room_id, event)
            for event in info.timeline.events:
                await self._guarded(room_id, event)

    async def _guarded(self, room_id: str, event: Any) -> None:
        sender = getattr(event, "sender", None)
        if sender == self.bot_user_id and not _is_state(event):
            return
        try:
            await self.on_room_event(room_id, event)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise  # the whole batch is retried: nothing is lost
            # A malformed or unexpected event must never stop the service.
            log.exception(
                "event %s (%s) in %s could not be handled; skipped",
                getattr(event, "event_id", "?"),
                classify(event),
                room_id,
            )


def is_infrastructure_error(exc: BaseException) -> bool:
    """Homeserver or database unavailable: retry later rather than skip."""
    if isinstance(exc, MatrixError):
        return exc.transient
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


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
        gateway: MatrixGateway,
        router: EventRouter,
        after_batch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.router = router
        # Runs once the batch is handled and its keys are in (e.g. retry undecryptable events).
        self.after_batch = after_batch
        self.synced = asyncio.Event()

    async def _handle(self, resp: SyncResponse) -> None:
        await self.router.handle(resp)
        await self.gateway.after_sync()
        if self.after_batch is not None:
            await self.after_batch()
        async with self.store.transaction() as tx:
            await tx.set_state(SYNC_TOKEN_KEY, resp.next_batch)

    async def run(self) -> None:
        async with self.store.transaction() as tx:
            since = await tx.get_state(SYNC_TOKEN_KEY)
        first = True
        delay = 1.0
        while True:
            try:
                # nio skips a response whose token it saw already; a retry of the same batch
                # after a failure must be decrypted and handled again.
                self.gateway.client.next_batch = since
                resp = await self.gateway.sync(since=since, timeout_ms=0 if first else LONG_POLL_MS)
                handling = asyncio.ensure_future(self._handle(resp))
                try:
                    await asyncio.shield(handling)
                except asyncio.CancelledError:
                    # A clean stop never leaves a batch half-handled (a kill -9 can;
                    # idempotent handlers cover that case).
                    await handling
                    raise
                since = resp.next_batch
                if first:
                    log.info("first sync handled: the service is ready")
                first = False
                delay = 1.0
                self.synced.set()
            except asyncio.CancelledError:
                raise
            except MatrixError as exc:
                log.warning("sync failed (%s); retry in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Exception:
                # Database down or a bug in a handler: do not advance, try the batch again.
                log.exception("handling a sync batch failed; retry in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
