"""A participant's device that appears after the bot's messages still reads them.

Issue 10 §3: the routed instructeur opens Element for the first time after the demande
was opened (a new session, as on a new computer), accepts the invitation, and must read
the dossier and what was bridged from email, not « L'historique des messages n'est pas
disponible sur cet appareil ». The bot gives such a device its earlier session keys as
an `m.room_key` from its own device, once the owner cross-signed it; an unsigned device
gets `m.room_key.withheld` instead.
"""

from __future__ import annotations

from pathlib import Path

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.e2ee import Withheld, decrypted_later
from tests.support.email import email_bot, mailonly, relay, reply
from tests.support.interop import ElementClient
from tests.support.matrix import TEST_PASSWORD
from tests.support.world import demande_of, make_world, open_demande


async def test_element_first_session_after_the_opening_reads_dossier_and_email_reply(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        bot_id = world.bot_id
        # The routed instructeur has an account, and no Element session yet.
        user = await clients.user("element")
        await botsupport.add_agent(
            runner.store,
            world.directory,
            "element",
            matrix_id=user.user_id,
            roles=[Role.INSTRUCTEUR],
            group="caf",
            first_name="Élise",
        )
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        assert room_id

        # Before she logs in, the email-only colleague answers by email: the bot posts it.
        sophie = mailonly(world)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
        await matrix.join_and_read(world.instr1, room_id, 1)
        n = count_from(world.instr1, room_id, bot_id)
        code, _ = await reply(runner, sink.to(sophie)[0], sophie, "Pièce reçue, je vérifie.")
        assert code == 250
        await reply_with(world.instr1, room_id, bot_id, "Pièce reçue", after=n)

        # Now she opens Element (a new device, as on a new computer) and accepts.
        async with ElementClient.start(synapse.base_url, user.user_id, TEST_PASSWORD) as element:
            await element.join(room_id)
            dossier = await element.wait_message(room_id, reference, sender=bot_id, timeout=30)
            assert dossier.status == "decrypted", dossier
            assert dossier.event is not None and "Dupontel" in (dossier.event.body or "")
            bridged = await element.wait_message(
                room_id, "Pièce reçue, je vérifie.", sender=bot_id, timeout=30
            )
            assert bridged.status == "decrypted", bridged
            # And the conversation goes on as usual.
            await element.send(room_id, "!statut")
            status = await element.wait_message(room_id, f"Demande {reference} :", sender=bot_id)
            assert status.status == "decrypted", status
        await runner.check_alive()


async def test_new_nio_device_catches_up_and_an_unsigned_one_gets_nothing(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        bot_id, instr1 = world.bot_id, world.instr1
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        assert room_id
        await matrix.join_and_read(instr1, room_id, 1)
        n = count_from(instr1, room_id, bot_id)
        await say(instr1, room_id, "!statut")
        answer = await reply_with(instr1, room_id, bot_id, f"Demande {reference} :", after=n)

        # The bot restarts: its Megolm sessions were in memory only; the archive is not.
        await runner.restart()

        # A second computer, signed by instr1: it reads what the bot sent before it existed.
        second = await clients.new_device(instr1.user_id)
        # Its first sync brought the bot's earlier messages, undecryptable then.
        assert any(e.sender == bot_id for e in matrix.inbox(second).undecryptable[room_id])

        def caught_up() -> bool:
            bodies = decrypted_later(second, room_id, bot_id)
            return any(reference in b and "Dupontel" in b for b in bodies) and answer in bodies

        await matrix.sync_until(second, caught_up, what="the earlier dossier and answer")

        # A third one, not signed by its owner: told the keys are withheld, reads nothing.
        unsigned = await clients.new_device(instr1.user_id, cross_signed=False)
        withheld = Withheld(unsigned)
        box = matrix.inbox(unsigned)
        earlier = {e.session_id for e in box.undecryptable[room_id] if e.sender == bot_id}
        assert earlier

        def told() -> bool:
            return earlier <= {e["session_id"] for e in withheld.events if e["room_id"] == room_id}

        await matrix.sync_until(unsigned, told, what="withheld keys for the unsigned device")
        assert {e["code"] for e in withheld.events} == {"m.unverified"}
        assert decrypted_later(unsigned, room_id, bot_id) == []
        await runner.check_alive()
