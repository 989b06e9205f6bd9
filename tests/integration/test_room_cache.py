"""Demande rooms leave nio's memory when idle, and the bot works the same without them.

The bot will be in ~100,000 rooms; nio keeps a `MatrixRoom` (members, name, power
levels) for every room a sync ever mentioned, so its memory grew with them
(tests/bench/test_bench_rooms.py). The gateway now keeps only the most recently active
demande rooms (`ROOM_CACHE`); here the cache is 0, so that every demande room is
forgotten right after each sync, the harshest case: each send rebuilds the room from
the homeserver, as after a restart.

Real Synapse, the real bot, real nio E2EE clients.
"""

from __future__ import annotations

from pathlib import Path

import nio

from bot.devserver import LocalSynapse
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.world import demande_of, make_world, open_demande


def last_from(client: nio.AsyncClient, room_id: str, sender: str) -> nio.Event:
    return [e for e in matrix.inbox(client).events(room_id) if e.sender == sender][-1]


async def test_forgotten_demande_room_still_served_and_its_key_rotated_after_a_leave(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        app = await runner.start()
        world = await make_world(clients, runner)
        gateway = app.gateway
        gateway.room_cache = 0
        aidant, instr1, instr2, bot_id = world.aidant, world.instr1, world.instr2, world.bot_id

        dm, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        assert room_id
        assert reference in (await matrix.join_and_read(instr1, room_id, 1))[0]
        await matrix.join_and_read(instr2, room_id, 1)

        async def command(client: nio.AsyncClient, text: str, expect: str) -> nio.Event:
            n = count_from(client, room_id, bot_id)
            await say(client, room_id, text)
            await reply_with(client, room_id, bot_id, expect, after=n)
            return last_from(client, room_id, bot_id)

        # The room was in the syncs that brought the joins and the command; the bot
        # answered from a view rebuilt from the homeserver, then forgot it again.
        first = await command(instr1, "!statut", reference)
        await matrix.wait_for(lambda: room_id not in gateway.client.rooms, 10, "room forgotten")
        # Its outbound session too: nothing is kept per idle room.
        olm = gateway.client.olm
        assert olm is not None and room_id not in olm.outbound_group_sessions
        # The direct chat is not a demande room: it stays.
        assert dm in gateway.client.rooms

        # Someone who held the room key leaves while the room is out of memory: the next
        # message is under a new session, which the ones who stay can read.
        left = await instr2.room_leave(room_id)
        assert isinstance(left, nio.RoomLeaveResponse), left
        second = await command(instr1, "!statut", reference)
        assert getattr(second, "session_id", None) != getattr(first, "session_id", None)
        # And the aidant, invited all along, decrypts it after joining.
        await matrix.accept_invite(aidant, room_id)
        box = matrix.inbox(aidant)
        await matrix.sync_until(
            aidant,
            lambda: any(e.event_id == second.event_id for e in box.events(room_id)),
            30,
            "the second answer decrypted by the aidant",
        )
        await runner.check_alive()
