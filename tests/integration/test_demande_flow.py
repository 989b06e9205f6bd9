"""The central loop on the real homeserver: an aidant opens a demande, the room is built.

Real Synapse, the real bot (in this test's event loop), real nio E2EE clients
for the aidant, the instructeurs and the intruder.
"""

from __future__ import annotations

from pathlib import Path

import nio

from bot.devserver import LocalSynapse
from bot.domain.model import Role, Status
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, next_reply, say


async def _setup(synapse: LocalSynapse, clients: matrix.Clients, runner: botsupport.BotRunner):  # type: ignore[no-untyped-def]
    directory = botsupport.Directory()
    aidant = await clients.client("aidant")
    instr1 = await clients.client("instr1")
    instr2 = await clients.client("instr2")
    store = runner.store
    await botsupport.add_group(store, directory, "fs", "france_services", ["95"])
    await botsupport.add_group(store, directory, "caf", "caf", ["95"])
    await botsupport.add_agent(
        store, directory, "aidant", matrix_id=aidant.user_id, roles=[Role.AIDANT], group="fs"
    )
    await botsupport.add_agent(
        store, directory, "instr1", matrix_id=instr1.user_id, roles=[Role.INSTRUCTEUR], group="caf"
    )
    await botsupport.add_agent(
        store, directory, "instr2", matrix_id=instr2.user_id, roles=[Role.INSTRUCTEUR], group="caf"
    )
    await botsupport.add_agent(
        store,
        directory,
        "mailonly",
        matrix_id=None,
        email=f"{matrix.unique('sophie')}@caf95.example.test",
        roles=[Role.INSTRUCTEUR],
        group="caf",
    )
    return directory, aidant, instr1, instr2


async def _open(aidant: nio.AsyncClient, bot_id: str, form: str) -> tuple[str, str]:
    """Direct chat, form, recap, !confirmer. Returns (direct room, the confirmation text)."""
    dm = await botsupport.open_direct_chat(aidant, bot_id)
    n = count_from(aidant, dm, bot_id)
    await say(aidant, dm, form)
    recap = await next_reply(aidant, dm, bot_id, after=n)
    assert "!confirmer" in recap, recap
    await say(aidant, dm, "!confirmer")
    opened = await next_reply(aidant, dm, bot_id, after=n + 1)
    return dm, opened


async def test_open_demande_builds_the_room(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        directory, aidant, instr1, instr2 = await _setup(synapse, clients, runner)
        bot_id = runner.user_id

        dm = await botsupport.open_direct_chat(aidant, bot_id)
        await say(aidant, dm, "!demande")
        template = await next_reply(aidant, dm, bot_id, after=0)
        assert "territoire" in template and "J'atteste avoir recueilli" in template

        await say(aidant, dm, filled_form())
        recap = await next_reply(aidant, dm, bot_id, after=1)
        assert "!confirmer" in recap and "Dupontel" in recap

        await say(aidant, dm, "!confirmer")
        opened = await next_reply(aidant, dm, bot_id, after=2)
        assert "ouverte" in opened, opened

        async with runner.store.transaction() as tx:
            demandes = await tx.list_demandes()
        assert len(demandes) == 1
        demande = demandes[0]
        assert demande.creation_step == "ready"
        assert demande.status == Status.NOUVELLE
        room_id = demande.room_id
        assert room_id

        texts = await matrix.join_and_read(instr1, room_id, 1)
        assert "Dupontel" in texts[0] and demande.reference in texts[0]
        await runner.check_alive()
