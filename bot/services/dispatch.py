"""Which use case an event belongs to: the admin room, a demande room, or a direct chat
with an agent; and which invitations the bot accepts."""

from __future__ import annotations

import logging
from typing import Any

from nio import InviteMemberEvent, MegolmEvent, RoomMessageText

from bot.commands import direct as direct_commands
from bot.commands import room as room_commands
from bot.domain.model import Demande
from bot.matrix.attachments import is_attachment
from bot.matrix.errors import MatrixError
from bot.matrix.port import Gateway
from bot.services.admin_room import AdminConsole
from bot.services.clock import Clock
from bot.services.companion import Companions
from bot.services.demande_room import DemandeRooms
from bot.services.failures import homeserver_outage
from bot.services.group_admin import GroupConsole
from bot.services.opening import Incoming, Opening
from bot.services.retention import Retention
from bot.services.room_index import DemandeRoomIndex
from bot.services.spaces import Spaces
from bot.services.undecryptable import Undecryptables
from bot.store.db import Store

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        clock: Clock,
        bot_user_id: str,
        index: DemandeRoomIndex,
        rooms: DemandeRooms,
        opening: Opening,
        admin: AdminConsole,
        group: GroupConsole,
        retention: Retention,
        undecryptables: Undecryptables,
        spaces: Spaces | None = None,
        companions: Companions | None = None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.clock = clock
        self.bot_user_id = bot_user_id
        self.index = index
        self.rooms = rooms
        self.opening = opening
        self.admin = admin
        self.group = group
        self.retention = retention
        self.undecryptables = undecryptables
        self.spaces = spaces
        self.companions = companions

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
            elif self.admin.is_admin_room(room_id):
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
            if homeserver_outage(exc):
                raise
            log.warning("invitation to %s: %s %s", room_id, exc.status, exc.errcode)

    def _is_direct_chat(self, room_id: str) -> bool:
        """A room with the bot and one person: where a form may be sent.

        Guards against acting on a room the bot owns but does not know yet (a demande
        whose room ID was not recorded before a crash) as if it were a direct chat.
        """
        count = self.gateway.member_count(room_id)
        return count is None or count <= 2

    async def _active(self, sender: str) -> None:
        """A directory agent wrote to the bot: their account is in use (inactivity)."""
        async with self.store.transaction() as tx:
            agent = await tx.get_agent_by_matrix_id(sender)
            if agent is not None and agent.active:
                await tx.touch_activity(agent.id, self.clock.now())

    async def on_room_event(self, room_id: str, event: Any) -> None:
        if self.spaces is not None and self.spaces.is_space(room_id):
            return  # the bot's spaces: nobody talks there, nothing to do
        if self.companions is not None and self.companions.is_companion(room_id):
            await self.companions.on_event(room_id, event)  # the instructeurs' own room
            return
        if self.admin.is_admin_room(room_id):
            if isinstance(event, RoomMessageText) and event.sender != self.bot_user_id:
                await self._active(event.sender)
            await self.admin.on_event(room_id, event)
            return
        if room_id in self.index:
            async with self.store.transaction() as tx:
                demande = await tx.get_demande_by_room(room_id)
            if demande is not None:
                await self._in_demande_room(demande, room_id, event)
                return
        if isinstance(event, RoomMessageText):
            if event.sender == self.bot_user_id:
                return
            if not self._is_direct_chat(room_id):
                await self._active(event.sender)
                # Not a demande room, not a one-to-one chat: the bot does not act here.
                log.info("message in %s ignored: not a direct chat", room_id)
                return
            # Neither looks at the database for a form or a direct chat's own command.
            if await self.group.handles(room_id, event) or await self.admin.refuse_elsewhere(
                room_id, event, own_commands=direct_commands.DIRECT, recipients=[event.sender]
            ):
                # A responsable's command in their follow-up room, or an admin command
                # refused here.
                await self._active(event.sender)
                return
            # The direct chat's own handling records the activity in its transaction.
            await self.opening.on_direct_message(Incoming.of(room_id, event))
        elif _is_media(event):
            # A file in a direct chat: the usager's letter, kept with the draft.
            if event.sender == self.bot_user_id or not self._is_direct_chat(room_id):
                return
            await self.opening.on_direct_file(Incoming.of(room_id, event))
        elif isinstance(event, MegolmEvent):
            # A direct chat (the aidant's form): kept and retried like in a demande room.
            await self.undecryptables.record(room_id, event, reference=None)

    async def _in_demande_room(self, demande: Demande, room_id: str, event: Any) -> None:
        content = (getattr(event, "source", None) or {}).get("content")
        if isinstance(content, dict) and is_attachment(content):
            await self.retention.record_attachment(
                reference=demande.reference,
                room_id=room_id,
                event_id=event.event_id,
                sender=str(getattr(event, "sender", "")),
                content=content,
            )
        if isinstance(event, RoomMessageText) and await self.admin.refuse_elsewhere(
            room_id, event, own_commands=room_commands.ROOM, recipients=None
        ):
            return
        await self.rooms.on_event(demande, event)


def _is_media(event: Any) -> bool:
    content = (getattr(event, "source", None) or {}).get("content")
    return isinstance(content, dict) and is_attachment(content)
