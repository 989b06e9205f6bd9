"""A participant who joins after the opening reads the whole exchange so far.

Issue 10 §3: the CPAM agent invited after « pas le bon interlocuteur » saw only the
re-posted dossier, under « L'historique des messages n'est pas disponible ». The bot
now re-posts the earlier exchange for them (author, time, text, files), encrypted,
marked as a copy. The late joiner here is Element's own crypto stack.
"""

from __future__ import annotations

from pathlib import Path

import nio

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from bot.matrix.content import APLUS_KEY
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.e2ee import post_file
from tests.support.interop import ElementClient
from tests.support.matrix import TEST_PASSWORD
from tests.support.world import demande_of, make_world, open_demande


async def test_element_agent_invited_later_reads_the_earlier_exchange(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        bot_id, aidant, instr1 = world.bot_id, world.aidant, world.instr1
        cpam_user = await clients.user("cpam")
        await botsupport.add_agent(
            runner.store,
            world.directory,
            "cpam_agent",
            matrix_id=cpam_user.user_id,
            roles=[Role.INSTRUCTEUR],
            group="cpam",
            first_name="Céline",
        )
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        assert room_id

        # The exchange before the CPAM is brought in: messages, a file, a correction.
        await matrix.join_and_read(instr1, room_id, 1)
        await matrix.accept_invite(aidant, room_id)
        await say(instr1, room_id, "Bonjour, il manque l'avis d'imposition 2025.")
        await say(aidant, room_id, "Je vous l'envoie, voici le courrier de la CAF.")
        await post_file(aidant, room_id, b"%PDF-1.4 courrier", name="courrier-caf.pdf")
        n = count_from(instr1, room_id, bot_id)
        await say(instr1, room_id, "!pasleboninterlocuteur")
        await reply_with(instr1, room_id, bot_id, "interlocuteur", after=n)
        cpam = world.directory.groups["cpam"].name
        n = count_from(instr1, room_id, bot_id)
        await say(instr1, room_id, f"!inviter {cpam}")
        await reply_with(instr1, room_id, bot_id, "Invité", after=n)
        # Said after her invitation, before she opens Element: no device of hers could
        # get its key then; the copy, made at her join, has it.
        await say(instr1, room_id, "La CPAM est invitée, merci à elle.")

        async with ElementClient.start(
            synapse.base_url, cpam_user.user_id, TEST_PASSWORD
        ) as element:
            await element.join(room_id)
            dossier = await element.wait_message(room_id, "Dossier republié", sender=bot_id)
            assert dossier.status == "decrypted", dossier
            # The copy's last part (a file splits it in two), then every part.
            last = await element.wait_message(
                room_id, "La CPAM est invitée, merci à elle.", sender=bot_id, timeout=30
            )
            assert last.status == "decrypted", last
            parts = [
                e.body
                for e in await element.messages(room_id)
                if e.sender == bot_id and e.body and e.body.startswith("Copie des échanges")
            ]
            assert len(parts) == 2 and "(1/2)" in parts[0] and "(2/2)" in parts[1], parts
            body = "\n".join(parts)
            assert "il manque l'avis d'imposition 2025." in body
            assert "Je vous l'envoie, voici le courrier de la CAF." in body
            assert "Instr1 Test (CAF)" in body and "Aidant Test" in body
            assert "courrier-caf.pdf" in body
            # Commands are not copied (the bot's answers, which are, say what they did).
            assert ":\n!pasleboninterlocuteur" not in body and ":\n!inviter" not in body
            assert "Invité(s) : Céline Test" in body
            assert "La CPAM est invitée, merci à elle." in body
            assert "Dupontel" not in body  # the dossier is re-posted, not copied twice
            file = await element.wait_message(room_id, "courrier-caf.pdf", sender=bot_id)
            assert file.status == "decrypted", file
            # What is said after her arrival reaches her directly, as usual.
            await matrix.sync_until(
                instr1,
                lambda: matrix.has_joined(instr1, room_id, cpam_user.user_id),
                what="the CPAM agent's join, seen by instr1",
            )
            await say(instr1, room_id, "Bienvenue à la CPAM.")
            direct = await element.wait_message(room_id, "Bienvenue", sender=instr1.user_id)
            assert direct.status == "decrypted", direct

        # The others read the same copy (nothing is hidden from them), once.
        def copies() -> list[nio.RoomMessageNotice | nio.RoomMessageText]:
            return [
                e
                for e in matrix.inbox(instr1).events(room_id)
                if e.sender == bot_id
                and "history_copy" in (e.source.get("content", {}).get(APLUS_KEY) or {})
            ]

        await matrix.sync_until(instr1, lambda: bool(copies()), what="the copy, for instr1")
        async with runner.store.transaction() as tx:
            audited = await tx.audit_entries(reference=reference, action="history_copied")
        assert [e.details["for"] for e in audited] == [cpam_user.user_id]
        assert audited[0].details["messages"] >= 3
        await runner.check_alive()
