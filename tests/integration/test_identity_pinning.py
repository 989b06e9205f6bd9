"""Participants' cross-signing identities pinned on first sight (issue 9, item 1).

Whoever holds an instructeur's password can reset their cross-signing identity and
sign a device of their own. The bot pinned the first master key it saw: the device
signed by a new one gets no room key, the demande room and the operators are told
in French, and only an operator's `!identite-accepter` lets the keys flow again.
"""

from __future__ import annotations

from pathlib import Path

from bot.devserver import LocalSynapse
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.e2ee import Withheld, decrypted_later, operator_in_admin_room
from tests.support.world import demande_of, make_world, open_demande


async def test_a_reset_identity_gets_no_key_until_an_operator_accepts_it(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        bot_id = world.bot_id
        operator, admin_room = await operator_in_admin_room(clients, runner, world)

        async def command(text: str, expect: str) -> str:
            n = count_from(operator, admin_room, bot_id)
            await say(operator, admin_room, text)
            return await reply_with(operator, admin_room, bot_id, expect, after=n)

        aidant, instr1 = world.aidant, world.instr1
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        assert room_id
        await matrix.join_and_read(instr1, room_id, 1)
        await matrix.accept_invite(aidant, room_id)
        async with runner.store.transaction() as tx:
            pin = await tx.identity_pin(instr1.user_id)
            pinned = await tx.audit_entries(action="identity_pinned")
        assert pin is not None and pin.pending_master_key is None
        assert instr1.user_id in {e.details["user"] for e in pinned}

        # Someone with instr1's password resets the identity and signs a new device.
        n_room = count_from(aidant, room_id, bot_id)
        n_admin = count_from(operator, admin_room, bot_id)
        intruder = await clients.new_device(instr1.user_id, cross_signed=False)
        withheld = Withheld(intruder)
        await matrix.reset_identity(intruder)
        assert [d.cross_signed for d in await matrix.published_devices(aidant, instr1.user_id)
                if d.device_id == intruder.device_id] == [True]  # fmt: skip

        # The room and the operators are told, in French.
        told = await reply_with(aidant, room_id, bot_id, "identité de chiffrement", after=n_room)
        assert "ne transmet plus les clés" in told and "Instr1 Test" in told
        alert = await reply_with(
            operator, admin_room, bot_id, "Changement d'identité", after=n_admin
        )
        assert instr1.user_id in alert and reference in alert
        assert f"!identite-accepter {instr1.user_id}" in alert

        # The new device is refused the keys: earlier ones and the next message's.
        box = matrix.inbox(intruder)
        earlier = {e.session_id for e in box.undecryptable[room_id] if e.sender == bot_id}
        assert earlier

        def refused() -> bool:
            got = {e["session_id"] for e in withheld.events if e["room_id"] == room_id}
            return earlier <= got

        await matrix.sync_until(intruder, refused, what="the earlier keys withheld")
        assert {e["code"] for e in withheld.events} == {"m.unverified"}
        n = count_from(aidant, room_id, bot_id)
        await matrix.send_text(aidant, room_id, "!statut")
        answer = await reply_with(aidant, room_id, bot_id, f"Demande {reference} :", after=n)
        [answer_id] = [e.event_id for e in matrix.inbox(aidant).events(room_id) if e.body == answer]
        await matrix.sync_until(
            intruder,
            lambda: answer_id in {e.event_id for e in box.undecryptable[room_id]},
            what="the answer, undecryptable for the new identity's device",
        )
        assert decrypted_later(intruder, room_id, bot_id) == []
        async with runner.store.transaction() as tx:
            pin = await tx.identity_pin(instr1.user_id)
            changed = await tx.audit_entries(action="identity_changed")
        assert pin is not None and pin.pending_master_key is not None
        assert [e.details["user"] for e in changed] == [instr1.user_id]

        # A non-operator cannot accept it; the operator does, after checking with instr1.
        await command(f"!identite-accepter {aidant.user_id}", "Aucun changement")
        await command(f"!identite-accepter {instr1.user_id}", "acceptée")
        confirmed = await reply_with(aidant, room_id, bot_id, "confirmée par un opérateur", after=n)
        assert "Instr1 Test" in confirmed

        def reads_now() -> bool:
            bodies = decrypted_later(intruder, room_id, bot_id)
            return answer in bodies and any("Dupontel" in b for b in bodies)

        await matrix.sync_until(intruder, reads_now, what="the keys, once the identity accepted")
        async with runner.store.transaction() as tx:
            pin = await tx.identity_pin(instr1.user_id)
            accepted = await tx.audit_entries(action="identity_accepted")
        assert pin is not None and pin.pending_master_key is None
        assert [(e.actor, e.details["user"]) for e in accepted] == [
            (operator.user_id, instr1.user_id)
        ]
        await runner.check_alive()
