"""The daily work on the real homeserver: « mes demandes », invitations, closing.

Real Synapse, the real bot, real nio E2EE clients (issue 10, sections 1, 3 and 4).
"""

from __future__ import annotations

from pathlib import Path

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, reply_with, say
from tests.support.world import demande_of, make_world, open_demande


async def test_mesdemandes_in_the_direct_chat_and_for_an_instructeur(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, instr1, bot_id = world.aidant, world.instr1, world.bot_id
        cpam = await clients.client("cpam")
        await botsupport.add_agent(
            runner.store,
            world.directory,
            "cpam",
            matrix_id=cpam.user_id,
            roles=[Role.INSTRUCTEUR],
            group="cpam",
        )
        dm, ref_caf = await open_demande(world)
        _, ref_cpam = await open_demande(world, filled_form(organismes="CPAM", nom="Martinot"))
        caf = await demande_of(world, ref_caf)

        n = count_from(aidant, dm, bot_id)
        await say(aidant, dm, "!mesdemandes")
        board = await reply_with(aidant, dm, bot_id, "Vos demandes", after=n)
        assert "Vos demandes ouvertes : 2." in board, board
        assert f"{ref_caf} · nouvelle · CAF · 95 · aujourd'hui · attend : l'organisme" in board
        assert ref_cpam in board
        assert f"https://matrix.to/#/{caf.room_id}" in board

        # The usager's name is searched in the aidant's own direct chat.
        n = count_from(aidant, dm, bot_id)
        await say(aidant, dm, "!mesdemandes martinot")
        found = await reply_with(aidant, dm, bot_id, "Vos demandes", after=n)
        assert ref_cpam in found and ref_caf not in found, found

        # An instructeur sees the demandes of their group, and that it is their turn;
        # never by the usager's name.
        chat = await botsupport.open_direct_chat(instr1, bot_id)
        await say(instr1, chat, "!md nouvelle 95")
        mine = await reply_with(instr1, chat, bot_id, "Vos demandes", after=0)
        assert ref_caf in mine and ref_cpam not in mine, mine
        assert "à vous d'agir : répondre" in mine
        n = count_from(instr1, chat, bot_id)
        await say(instr1, chat, "!mesdemandes dupontel")
        assert "Aucune demande" in await reply_with(instr1, chat, bot_id, "Aucune", after=n)
