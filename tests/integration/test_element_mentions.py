"""Notified when it is your turn, and only then: Element's own push rules judge the bot's
messages (issue 10 §1).

Every bot message carries `m.mentions`: empty for information (the dossier names every
participant: before, Element highlighted it for each of them as if it were a mention),
the people who must act when it asks someone to act (the instructeurs of a new demande,
a newcomer, the aidant when the demande is marked traitée).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nio

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.interop import ElementClient
from tests.support.matrix import TEST_PASSWORD
from tests.support.world import demande_of, make_world, open_demande


def _content(client: nio.AsyncClient, room_id: str, contains: str) -> dict[str, Any]:
    for event in reversed(matrix.inbox(client).events(room_id)):
        if contains in event.body:
            content: dict[str, Any] = event.source["content"]
            return content
    raise AssertionError(f"no message containing {contains!r}")


async def test_element_notifies_the_people_asked_to_act_and_nobody_else(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        user = await clients.user("elise")
        # Her Matrix display name is the name the dossier shows: the old body-matching
        # rule would highlight any message naming her.
        resp = await synapse.admin_request(
            "PUT",
            f"/_matrix/client/v3/profile/{user.user_id}/displayname",
            user.access_token,
            json={"displayname": "Élise Test"},
        )
        assert resp.ok, resp
        async with ElementClient.start(synapse.base_url, user.user_id, TEST_PASSWORD) as element:
            world = await make_world(clients, runner)
            await botsupport.add_agent(
                runner.store, world.directory, "elise", matrix_id=user.user_id,
                roles=[Role.INSTRUCTEUR], group="caf", first_name="Élise",
            )  # fmt: skip
            _, reference = await open_demande(world)
            demande = await demande_of(world, reference)
            room_id = demande.room_id
            await element.join(room_id)

            # The new demande asks the routed instructeurs to act: Élise is notified.
            dossier = await element.wait_message(room_id, "Dupontel", sender=world.bot_id)
            assert dossier.event is not None, dossier
            actions = await element.push_actions(room_id, dossier.event.event_id)
            assert actions["notify"] and actions["highlight"], actions
            # The aidant is named in it, but asked nothing.
            await matrix.join_and_read(world.aidant, room_id, 1)
            mentions = _content(world.aidant, room_id, "Dupontel")["m.mentions"]
            assert world.aidant.user_id not in mentions["user_ids"]
            assert set(mentions["user_ids"]) >= {user.user_id, world.instr1.user_id}

            # A colleague joins later: the re-posted dossier asks only them, not Élise.
            instr3 = await clients.client("instr3")
            await botsupport.add_agent(
                runner.store, world.directory, "instr3", matrix_id=instr3.user_id,
                roles=[Role.INSTRUCTEUR], group="cpam",
            )  # fmt: skip
            await matrix.join_and_read(world.instr1, room_id, 1)
            n = count_from(world.instr1, room_id, world.bot_id)
            cpam = world.directory.groups["cpam"].name
            await say(world.instr1, room_id, f"!inviter {cpam}")
            await reply_with(world.instr1, room_id, world.bot_id, "Invité", after=n)
            await matrix.join_and_read(instr3, room_id, 1)
            repost = await element.wait_message(room_id, "republié", sender=world.bot_id)
            assert repost.event is not None, repost
            actions = await element.push_actions(room_id, repost.event.event_id)
            assert not actions["highlight"], actions  # before: her name highlighted it

            # An answer moves the status: information, nobody notified by the bot's notice.
            await say(world.instr1, room_id, "Je regarde le dossier.")
            status = await element.wait_message(room_id, "en cours", sender=world.bot_id)
            assert status.event is not None, status
            actions = await element.push_actions(room_id, status.event.event_id)
            assert not actions["notify"] and not actions["highlight"], actions

            # « traitée » asks the aidant, and only the aidant, whether to close.
            n = count_from(world.aidant, room_id, world.bot_id)
            await say(world.instr1, room_id, "!traitee")
            await reply_with(world.aidant, room_id, world.bot_id, "traité", after=n)
            treated = _content(world.aidant, room_id, "a traité la demande")
            assert treated["msgtype"] == "m.text"
            assert treated["m.mentions"] == {"user_ids": [world.aidant.user_id]}
            seen = await element.wait_message(room_id, "a traité", sender=world.bot_id)
            assert seen.event is not None, seen
            actions = await element.push_actions(room_id, seen.event.event_id)
            assert not actions["highlight"], actions
        await runner.check_alive()
