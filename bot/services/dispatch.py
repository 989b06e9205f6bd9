"""Which use case an event belongs to: a demande room, or a direct chat with an agent."""

from __future__ import annotations

import logging
from typing import Any

from nio import InviteMemberEvent, MegolmEvent, RoomMemberEvent, RoomMessageText

from bot.commands import direct as direct_commands
from bot.commands import room as room_commands
from bot.matrix.errors import MatrixError
from bot.matrix.gateway import MatrixGateway
from bot.services.clock import Clock
from bot.services.demande_room import DemandeRooms
from bot.services.opening import Incoming, Opening
from bot.services.outbox import Outbox
from bot.store.db import Store

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        gateway: MatrixGateway,
        opening: Opening,
        rooms: DemandeRooms,
        outbox: Outbox,
        clock: Clock,
        bot_user_id: str,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.opening = opening
        self.rooms = rooms
        self.outbox = outbox
        self.clock = clock
        self.bot_user_id = bot_user_id
        # Set by the admin wiring (bot.admin_wiring): the admin room, and the retention
        # job's record of files posted in demande rooms.
        self.admin: Any | None = None
        self.retention: Any | None = None

    async def on_invite(self, room_id: str, invite_state: list[Any]) -> None:
        """Join direct chats opened by directory agents; decline everything else."""
        inviter: str | None = None
        is_direct = False
        for ev in invite_state:
            # nio moves `content` out of `source` for invite-state member events.
            if isinstance(ev, InviteMemberEvent) and ev.state_key == self.bot_user_id:
                inviter = ev.sender
                is_direct = bool((ev.content or {}).get("is_direct"))
        async with self.store.transaction() as tx:
            if await tx.get_demande_by_room(room_id) is not None:
                accept, why = True, "own_room"
            elif self.admin is not None and self.admin.is_admin_room(room_id):
                accept, why = True, "admin_room"
            else:
                agent = await tx.get_agent_by_matrix_id(inviter) if inviter else None
                if agent is not None and agent.active and is_direct:
                    accept, why = True, "direct_chat"
                else:
                    accept = False
                    why = "not_direct" if agent is not None else "unknown_inviter"
            await tx.audit(
                "invitation_accepted" if accept else "invitation_declined",
                actor=inviter or "?",
                details={"room_id": room_id, "why": why},
                now=self.clock.now(),
            )
        log.info("invitation to %s %s (%s)", room_id, "accepted" if accept else "declined", why)
        try:
            if accept:
                await self.gateway.join(room_id)
            else:
                await self.gateway.leave(room_id)
        except MatrixError as exc:
            if exc.transient:
                raise
            log.warning("invitation to %s: %s %s", room_id, exc.status, exc.errcode)

    def _is_direct_chat(self, room_id: str) -> bool:
        """A room with the bot and one person: where a form may be sent.

        Guards against acting on a room the bot owns but does not know yet (a demande
        whose room ID was not recorded before a crash) as if it were a direct chat.
        """
        room = self.gateway.client.rooms.get(room_id)
        return room is None or _members_of(room) <= 2

    async def on_room_event(self, room_id: str, event: Any) -> None:
        if self.admin is not None and self.admin.is_admin_room(room_id):
            await self.admin.on_event(room_id, event)
            return
        demande = None
        if self.opening.is_demande_room(room_id):
            async with self.store.transaction() as tx:
                demande = await tx.get_demande_by_room(room_id)
        if demande is not None:
            if self.retention is not None and _is_file(event):
                await self.retention.record_attachment(
                    reference=demande.reference,
                    room_id=room_id,
                    event_id=event.event_id,
                    content=event.source.get("content") or {},
                )
            if (
                self.admin is not None
                and isinstance(event, RoomMessageText)
                and await self.admin.refuse_elsewhere(
                    room_id, event, own_commands=room_commands.ROOM, recipients=None
                )
            ):
                return
            await self.rooms.on_event(demande, event)
            return
        if isinstance(event, RoomMessageText):
            if event.sender == self.bot_user_id:
                return
            if not self._is_direct_chat(room_id):
                # Not a demande room, not a one-to-one chat: the bot does not act here.
                log.info("message in %s ignored: not a direct chat", room_id)
                return
            if self.admin is not None and await self.admin.refuse_elsewhere(
                room_id, event, own_commands=direct_commands.DIRECT, recipients=[event.sender]
            ):
                return
            msg = Incoming.of(room_id, event)
            await self.opening.on_direct_message(msg, direct_commands.parse(msg.body))
        elif isinstance(event, MegolmEvent):
            # A direct chat (the aidant's form): kept and retried like in a demande room.
            await self.rooms.on_undecryptable(room_id, event, reference=None)
        elif isinstance(event, RoomMemberEvent):
            return


def _members_of(room: Any) -> int:
    return len(getattr(room, "users", {}) or {})


def _is_file(event: Any) -> bool:
    """A file or image message (encrypted or not) whose media the retention job deletes."""
    source = getattr(event, "source", None) or {}
    content = source.get("content") if isinstance(source, dict) else None
    return (
        isinstance(content, dict)
        and source.get("type") == "m.room.message"
        and content.get("msgtype") in ("m.file", "m.image", "m.video", "m.audio")
        and isinstance(getattr(event, "event_id", None), str)
    )
