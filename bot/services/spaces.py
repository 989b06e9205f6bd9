"""Spaces: every demande grouped and labelled in Element's room list, without typing.

The mechanism, and why:
  - One Matrix space per group of the directory that has demandes (« Administration+ ·
    CAF 95 »), which the bot creates on first need and keeps: its members are the group's
    agents with a Matrix account (invited by the bot), its children the group's open
    demande rooms. Element shows spaces in its left sidebar and, clicking one, only its
    rooms; any client that supports spaces (m.space.child, MSC1772) does the same, and
    the others simply show one more room. A space per *group* (not per agent) keeps the
    extra rooms few — a few per structure, never per demande — and an agent sees the
    demandes of their group together (an aidant's structure, an instructeur's CAF).
  - One archive space per group (« … · archives »), itself a child of the group's space,
    so Element shows it nested under it: a clôturée demande moves there, out of the way,
    and comes back on reopening.
  - The status is in the room name (« Demande A-2026-000042 · CAF · 95 · traitée »):
    Element's room list shows names, and a name is metadata only — reference, catalogue
    words and a status, never personal data (`bot.domain.reference.room_name`).
  - Each demande room also names its spaces in m.space.parent, so that a client showing
    the room can show which space it belongs to.

The spaces are unencrypted rooms whose state holds group names and room IDs only. Only
the bot may change their state or invite (power levels); nobody talks in them.

Level-triggered and crash-safe: a worker compares what each ready demande should look
like (its spaces, its status) with what was last applied (`bot_state`), and applies the
difference; woken after a status change or an invitation, and every minute.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from bot.domain import room_spec
from bot.domain.model import Demande, Group, Status
from bot.matrix.port import Gateway
from bot.services.failures import database_unavailable, homeserver_outage
from bot.services.room_specs import RoomSpecs, server_of
from bot.services.worker import Wakeup, Worker
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)

SPACE_KEY = "space.group.{group_id}"
ARCHIVE_KEY = "space.archive.{group_id}"
PLACED_KEY = "space.placed.{demande_id}"
MEMBERS_KEY = "space.members.{group_id}"
SPACE_PREFIX = "Administration+ · "


class Spaces:
    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        specs: RoomSpecs,
        wakeup: Wakeup,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.specs = specs
        self.worker = Worker("spaces", self.step, idle_seconds=60.0, wakeup=wakeup)
        self._spaces: set[str] = set()

    def wake(self) -> None:
        self.worker.wake()

    async def run(self) -> None:
        await self.worker.run()

    async def load(self) -> None:
        """Remember the spaces already made (their events are not a direct chat's)."""
        async with self.store.transaction() as tx:
            for group in await tx.list_groups():
                for key in (SPACE_KEY, ARCHIVE_KEY):
                    room_id = await tx.get_state(key.format(group_id=group.id))
                    if room_id:
                        self._spaces.add(room_id)

    def is_space(self, room_id: str) -> bool:
        return room_id in self._spaces

    @property
    def _via(self) -> list[str]:
        return [server_of(self.specs.bot_user_id)]

    # ------------------------------------------------------------------ the worker
    async def step(self) -> int:
        """Apply what changed since the last step; returns how many demandes were placed."""
        async with self.store.transaction() as tx:
            todo = []
            wiped = await tx.wiped_demande_ids()  # their rooms are purged
            for demande in await tx.list_demandes():
                if demande.creation_step != "ready" or demande.room_id is None:
                    continue
                if demande.id in wiped:
                    continue
                placed = await tx.get_state(PLACED_KEY.format(demande_id=demande.id))
                if demande.status is Status.CLOTUREE and _status_of(placed) == demande.status:
                    continue  # archived already: nobody joins a closed demande (cheap steps)
                groups = await self._groups_of(tx, demande)
                wanted = _signature(demande.status, groups)
                if placed != wanted:
                    todo.append((demande, groups, placed))
        done = 0
        for demande, groups, placed in todo:
            try:
                await self.place(demande, groups, _groups_of_signature(placed))
                done += 1
            except Exception as exc:
                if homeserver_outage(exc) or database_unavailable(exc):
                    raise
                # This demande's problem stays with it: tried again at the next step.
                log.exception("demande %s not placed in its spaces", demande.reference)
        await self._sync_members()
        return done

    async def _sync_members(self) -> None:
        """A group's agents join or leave the directory: its spaces follow (cheap when
        nothing changed: the last membership applied is kept in `bot_state`)."""
        async with self.store.transaction() as tx:
            todo = []
            for group in await tx.list_groups():
                space = await tx.get_state(SPACE_KEY.format(group_id=group.id))
                archive = await tx.get_state(ARCHIVE_KEY.format(group_id=group.id))
                if not (space and archive):
                    continue
                agents = await tx.agents_of_group(group.id)
                members = sorted(a.matrix_id for a in agents if a.matrix_id)
                key = MEMBERS_KEY.format(group_id=group.id)
                if await tx.get_state(key) != json.dumps(members):
                    todo.append((group.id, (space, archive), members))
        for group_id, rooms, members in todo:
            for room_id in rooms:
                await self._invite_missing(room_id, members)
                await self._remove_others(room_id, members)
            async with self.store.transaction() as tx:
                await tx.set_state(MEMBERS_KEY.format(group_id=group_id), json.dumps(members))

    async def _remove_others(self, room_id: str, members: Sequence[str]) -> None:
        """Whoever left the group (or was deactivated) no longer sees its spaces."""
        wanted = set(members) | {self.specs.bot_user_id}
        for user, membership in (await self.gateway.members(room_id)).items():
            if user not in wanted and membership in ("join", "invite"):
                await self.gateway.kick(room_id, user, "Ne fait plus partie du groupe.")

    async def _groups_of(self, tx: Tx, demande: Demande) -> list[Group]:
        """The groups whose agents work on the demande: the aidant's, the routed ones and
        those of every participant (a group invited with !inviter)."""
        ids: list[int] = []
        aidant = await tx.get_agent(demande.aidant_agent_id)
        if aidant is not None and aidant.group_id is not None:
            ids.append(aidant.group_id)
        ids += demande.group_ids
        ids += [p.group_id for p in await tx.participants(demande.id) if p.group_id is not None]
        groups = []
        for group_id in dict.fromkeys(ids):
            group = await tx.get_group(group_id)
            if group is not None:
                groups.append(group)
        return groups

    async def place(self, demande: Demande, groups: Sequence[Group], before: Iterable[int]) -> None:
        """Name the room after its status; list it in its groups' spaces (or archives)."""
        assert demande.room_id is not None
        room = demande.room_id
        closed = demande.status is Status.CLOTUREE
        await self.gateway.put_state(room, "m.room.name", {"name": self.specs.name(demande)})
        for i, group in enumerate(groups):
            space, archive = await self.spaces_of(group)
            here, there = (archive, space) if closed else (space, archive)
            order = demande.reference
            await self.gateway.put_state(
                here, "m.space.child", {"via": self._via, "order": order}, room
            )
            await self.gateway.put_state(there, "m.space.child", {}, room)
            await self.gateway.put_state(
                room, "m.space.parent", {"via": self._via, "canonical": i == 0}, here
            )
            await self.gateway.put_state(room, "m.space.parent", {}, there)
        # A group no longer concerned (a participant removed) lets the room go.
        # Read first, then ask the homeserver: a transaction held over a request holds
        # SQLite's write lock that long (every other write waits, then fails).
        kept = {g.id for g in groups}
        left: list[str] = []
        async with self.store.transaction() as tx:
            for group_id in set(before) - kept:
                for key in (SPACE_KEY, ARCHIVE_KEY):
                    space_id = await tx.get_state(key.format(group_id=group_id))
                    if space_id:
                        left.append(space_id)
        for space_id in left:
            await self.gateway.put_state(space_id, "m.space.child", {}, room)
            await self.gateway.put_state(room, "m.space.parent", {}, space_id)
        async with self.store.transaction() as tx:
            await tx.set_state(
                PLACED_KEY.format(demande_id=demande.id), _signature(demande.status, groups)
            )
        log.info("demande %s placed in %d space(s)", demande.reference, len(groups))

    # ------------------------------------------------------------------ the spaces
    async def spaces_of(self, group: Group) -> tuple[str, str]:
        """The group's space and its archive space, created the first time; the group's
        Matrix agents are invited to both (newcomers too, at the next placement)."""
        async with self.store.transaction() as tx:
            space = await tx.get_state(SPACE_KEY.format(group_id=group.id))
            archive = await tx.get_state(ARCHIVE_KEY.format(group_id=group.id))
            members = [
                a.matrix_id for a in await tx.agents_of_group(group.id) if a.matrix_id is not None
            ]
        if space is None:
            space = await self._create(
                f"{SPACE_PREFIX}{group.name}",
                f"Les demandes en cours du groupe {group.name}. Les demandes clôturées sont "
                "dans l'espace « archives ».",
                members,
            )
            async with self.store.transaction() as tx:
                await tx.set_state(SPACE_KEY.format(group_id=group.id), space)
        if archive is None:
            archive = await self._create(
                f"{SPACE_PREFIX}{group.name} · archives",
                f"Les demandes clôturées du groupe {group.name}.",
                members,
            )
            await self.gateway.put_state(
                space, "m.space.child", {"via": self._via, "order": "~archives"}, archive
            )
            await self.gateway.put_state(
                archive, "m.space.parent", {"via": self._via, "canonical": True}, space
            )
            async with self.store.transaction() as tx:
                await tx.set_state(ARCHIVE_KEY.format(group_id=group.id), archive)
        for room_id in (space, archive):
            await self._invite_missing(room_id, members)
        return space, archive

    async def _create(self, name: str, topic: str, invite: list[str]) -> str:
        version = self.specs.room_version
        power = room_spec.canonical_power_levels(self.specs.bot_user_id, version)
        power["events_default"] = room_spec.ADMIN  # nobody talks in a space
        body: dict[str, Any] = {
            "preset": "private_chat",
            "visibility": "private",
            "room_version": version,
            "name": name,
            "topic": topic,
            "creation_content": {"type": "m.space"},
            "invite": [u for u in invite if self.specs.may_take_part(u)],
            "power_level_content_override": power,
            "initial_state": [
                {
                    "type": "m.room.guest_access",
                    "state_key": "",
                    "content": {"guest_access": "forbidden"},
                },
            ],
        }
        room_id = await self.gateway.create_room(body)
        self._spaces.add(room_id)
        return room_id

    async def _invite_missing(self, room_id: str, members: Sequence[str]) -> None:
        present = await self.gateway.members(room_id)
        for user in members:
            # Never again once invited: someone who left the space chose to.
            if user not in present and self.specs.may_take_part(user):
                await self.gateway.invite(room_id, user)


def _signature(status: Status, groups: Sequence[Group]) -> str:
    return json.dumps({"status": status.value, "groups": sorted(g.id for g in groups)})


def _status_of(signature: str | None) -> Status | None:
    try:
        return Status(json.loads(signature or "{}").get("status"))
    except (ValueError, AttributeError):
        return None


def _groups_of_signature(signature: str | None) -> list[int]:
    if not signature:
        return []
    try:
        groups = json.loads(signature).get("groups", [])
    except (ValueError, AttributeError):
        return []
    return [g for g in groups if isinstance(g, int)]
