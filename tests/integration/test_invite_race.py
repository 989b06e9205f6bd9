"""An agent brought in while the bot is sending never meets an undecryptable message.

The invitation (the guard) and the bot's messages (the outbox) run side by side. A
message whose key was shared before the invitation, but that reached the homeserver
after it, is shown to the newcomer (history visibility « invited ») and cannot be
decrypted: Element shows « Unable to decrypt » on their very first view of the demande.
The gateway orders the two: an invitation waits for a send in flight in its room, and the
next message's key includes the newcomer.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.world import demande_of, make_world, open_demande

# Each side waits for the other at most this long: with the ordering in place the two
# cannot overlap, and the send goes on once this has passed.
OVERLAP_WAIT_S = 5.0


async def test_a_message_in_flight_when_an_agent_is_invited_never_reaches_them_unreadable(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        instr3 = await clients.client("instr3")
        await botsupport.add_agent(
            runner.store, world.directory, "instr3", matrix_id=instr3.user_id,
            roles=[Role.INSTRUCTEUR], group="cpam",
        )  # fmt: skip
        await matrix.join_and_read(world.instr1, room_id, 1)

        # The bot's answer to « !inviter » is encrypted (without the newcomer, not yet
        # invited) and held just before it is sent, while the guard invites them.
        gateway: Any = runner.app.gateway
        send_plain, invite = gateway.send_plain, gateway.invite
        reached_send, invited = asyncio.Event(), asyncio.Event()

        async def held_send(room: str, content: Any, txn_id: str, event_type: str = "") -> str:
            if room == room_id and event_type == "m.room.encrypted" and not reached_send.is_set():
                reached_send.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(invited.wait(), OVERLAP_WAIT_S)
            return str(await send_plain(room, content, txn_id, event_type=event_type))

        async def invite_during_send(room: str, user_id: str, reason: str | None = None) -> None:
            if user_id == instr3.user_id:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reached_send.wait(), OVERLAP_WAIT_S)
            await invite(room, user_id, reason)
            if user_id == instr3.user_id:
                invited.set()

        gateway.send_plain, gateway.invite = held_send, invite_during_send
        n = count_from(world.instr1, room_id, world.bot_id)
        cpam = world.directory.groups["cpam"].name
        await say(world.instr1, room_id, f"!inviter {cpam}")
        await reply_with(world.instr1, room_id, world.bot_id, "Invité", after=n)
        # The race was staged: the send was held while the invitation was asked for.
        await asyncio.wait_for(invited.wait(), 30)
        assert reached_send.is_set()

        # Every message the newcomer is shown decrypts (read_texts fails on the first
        # that does not), the dossier re-posted for them among them.
        texts = await matrix.join_and_read(instr3, room_id, 1)
        await matrix.sync_until(
            instr3,
            lambda: any("republié" in t for t in matrix.texts(instr3, room_id)),
            30,
            "the dossier re-posted for the newcomer",
        )
        assert not matrix.inbox(instr3).undecryptable[room_id], texts
        await runner.check_alive()
