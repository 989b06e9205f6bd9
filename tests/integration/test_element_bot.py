"""The real bot against Element's own crypto stack (matrix-js-sdk + Rust crypto, only
cross-signed devices), on the real homeserver; and which devices get the bot's keys.

`ElementClient` is an instructeur of the demande: it joins the room the bot opened,
decrypts the dossier, writes, sends a command the bot acts on and decrypts the answer.
The same with a bot that skipped its cross-signing shows what Element then does.
"""

from __future__ import annotations

from pathlib import Path

import nio

from bot.devserver import LocalSynapse, RegisteredUser
from bot.domain.model import Role, Status
from bot.matrix.cross_signing import cross_signing_status
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.e2ee import Withheld
from tests.support.interop import ElementClient
from tests.support.matrix import TEST_PASSWORD
from tests.support.world import World, demande_of, make_world, open_demande


async def _world_with_element(
    clients: matrix.Clients, runner: botsupport.BotRunner, user: RegisteredUser
) -> World:
    world = await make_world(clients, runner)
    await botsupport.add_agent(
        runner.store,
        world.directory,
        "element",
        matrix_id=user.user_id,
        roles=[Role.INSTRUCTEUR],
        group="caf",
        first_name="Élise",
    )
    return world


async def _bot_identity(client: nio.AsyncClient, bot_id: str) -> list[tuple[str, bool]]:
    return [(d.device_id, d.cross_signed) for d in await matrix.published_devices(client, bot_id)]


async def _master_key(runner: botsupport.BotRunner) -> str | None:
    assert runner.app is not None
    report = await cross_signing_status(runner.app.gateway.client)
    return report.master_key


async def test_element_instructeur_works_with_the_real_bot_also_after_a_restart(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        assert runner.app is not None
        user = await clients.user("element")
        async with ElementClient.start(synapse.base_url, user.user_id, TEST_PASSWORD) as element:
            world = await _world_with_element(clients, runner, user)
            bot_id = world.bot_id
            _, reference = await open_demande(world)
            room_id = (await demande_of(world, reference)).room_id
            assert room_id
            await element.join(room_id)

            # The bot's device is signed by its owner, and its dossier decrypts.
            device = await element.device_status(bot_id, runner.app.gateway.device_id)
            assert device.known and device.signed_by_owner, device
            dossier = await element.wait_message(room_id, reference, sender=bot_id)
            assert dossier.status == "decrypted", dossier
            assert dossier.event is not None and dossier.event.body is not None
            assert "Dupontel" in dossier.event.body and dossier.event.encrypted

            # A free message: the bot decrypts it and acts (the demande goes « en cours »).
            await element.send(room_id, "Bonjour, je prends connaissance du dossier.")
            moved = await element.wait_message(room_id, "en cours", sender=bot_id)
            assert moved.status == "decrypted", moved
            assert (await demande_of(world, reference)).status == Status.EN_COURS

            # A command: acted on, answered, the answer decrypted by Element.
            await element.send(room_id, "!statut")
            status = await element.wait_message(room_id, f"Demande {reference} :", sender=bot_id)
            assert status.status == "decrypted", status
            assert status.event is not None and "Élise" in (status.event.body or "")

            # Restart: same identity, same single device, keys still flowing both ways.
            before = await _bot_identity(world.instr1, bot_id)
            assert before == [(runner.app.gateway.device_id, True)]
            master = await _master_key(runner)
            assert master is not None
            await runner.restart()
            assert await _bot_identity(world.instr1, bot_id) == before
            assert await _master_key(runner) == master
            await element.send(room_id, "!aide")
            help_ = await element.wait_message(room_id, "!inviter", sender=bot_id)
            assert help_.status == "decrypted", help_
            async with runner.store.transaction() as tx:
                assert await tx.undecryptable_events(pending_only=False) == []
        await runner.check_alive()


async def test_a_bot_without_cross_signing_is_excluded_by_element(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        runner.cross_sign = False  # the test switch: production always cross-signs
        await runner.start()
        assert runner.app is not None
        user = await clients.user("element")
        async with ElementClient.start(synapse.base_url, user.user_id, TEST_PASSWORD) as element:
            world = await _world_with_element(clients, runner, user)
            bot_id = world.bot_id
            _, reference = await open_demande(world)
            room_id = (await demande_of(world, reference)).room_id
            assert room_id
            await element.join(room_id)
            assert await _bot_identity(world.instr1, bot_id) == [
                (runner.app.gateway.device_id, False)
            ]

            # Element refuses the bot's messages...
            refused = await element.wait_message(room_id, reference, sender=bot_id)
            assert refused.status == "failed", refused
            assert refused.event is not None and refused.event.failure == "UNSIGNED_SENDER_DEVICE"

            # ... and withholds its keys: the bot cannot read the command, keeps it, no action.
            event_id = await element.send(room_id, "!statut")

            async def kept() -> bool:
                async with runner.store.transaction() as tx:
                    return [e.event_id for e in await tx.undecryptable_events()] == [event_id]

            await matrix.wait_for(kept, 30, "the undecryptable command kept by the bot")
            async with runner.store.transaction() as tx:
                assert await tx.audit_entries(action="command_statut") == []
        await runner.check_alive()


async def test_keys_follow_the_devices_authorised_users_sign(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        user = await clients.user("element")
        async with ElementClient.start(synapse.base_url, user.user_id, TEST_PASSWORD) as element:
            world = await _world_with_element(clients, runner, user)
            bot_id = world.bot_id
            _, reference = await open_demande(world)
            room_id = (await demande_of(world, reference)).room_id
            assert room_id
            await element.join(room_id)
            instr1 = world.instr1
            await matrix.join_and_read(instr1, room_id, 1)

            # The Element user logs in with a client that does not cross-sign its device.
            unsigned = await clients.new_device(user.user_id, cross_signed=False)
            withheld = Withheld(unsigned)
            # An authorised instructeur adds a device after the room exists, signed by him.
            second = await clients.new_device(instr1.user_id)

            n = count_from(instr1, room_id, bot_id)
            await say(instr1, room_id, "!statut")
            answer = await reply_with(instr1, room_id, bot_id, f"Demande {reference} :", after=n)

            # The new signed device of instr1 decrypts the answer (next message after login).
            def second_has_it() -> bool:
                return answer in [e.body for e in matrix.inbox(second).events(room_id)]

            await matrix.sync_until(second, second_has_it, what="the answer on the new device")

            # Element's signed device decrypts it too...
            seen = await element.wait_message(room_id, f"Demande {reference} :", sender=bot_id)
            assert seen.status == "decrypted", seen

            # ... the unsigned device of the same user gets no key, and is told why.
            box = matrix.inbox(unsigned)

            def refused() -> bool:
                return bool(withheld.events) and any(
                    e.sender == bot_id for e in box.undecryptable[room_id]
                )

            await matrix.sync_until(
                unsigned, refused, what="a withheld key for the unsigned device"
            )
            assert answer not in [e.body for e in box.events(room_id)]
            [code] = {e["code"] for e in withheld.events if e["room_id"] == room_id}
            assert code == "m.unverified"
            # The bot's latest message is in a session withheld from that device.
            last = [e for e in box.undecryptable[room_id] if e.sender == bot_id][-1]
            assert last.session_id in {e["session_id"] for e in withheld.events}
        await runner.check_alive()
