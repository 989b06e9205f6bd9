"""`!import-annuaire` on the real homeserver follows the ledger rules (issue 9, item 3).

A CSV line that gives an instructeur of an open demande a new Matrix ID is refused in the
preview, with its line number, and nothing changes: the old ID is never left authorised
behind a new one. The audited way out works end to end: `!agent-desactiver` kicks the old
ID, the import then changes the contact and leaves the agent deactivated (an import never
reactivates), and `!agent-reactiver` brings the agent back under the new ID only: invited
to the open demande, they read the dossier (room keys shared), the old ID stays out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bot.devserver import LocalSynapse
from tests.integration.test_admin_room import (
    AdminRunner,
    _actions,
    _admin,
    _send_file,
    admin_bot,
)
from tests.support import matrix
from tests.support.bot import count_from, reply_with
from tests.support.world import demande_of, open_demande

HEADER = "Prénom;Nom;Email;Matrix;Instructeur;Responsable;Territoire;Organisation;Groupe;BAL\n"


async def test_import_cannot_go_around_the_ledger_rules(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with admin_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        admin = await _admin(clients, runner)
        world, bot_id = admin.world, admin.bot_id
        assert runner.app is not None
        caf = world.directory.groups["caf"].name
        old_id, instr2 = world.instr1.user_id, world.instr2.user_id
        emails = {old_id: "instr1@caf95.example.test", instr2: "instr2@caf95.example.test"}
        async with runner.store.transaction() as tx:
            for matrix_id, email in emails.items():
                agent = await tx.get_agent_by_matrix_id(matrix_id)
                assert agent is not None
                await tx.update_agent(dataclasses.replace(agent, email=email))
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        await matrix.join_and_read(world.instr1, demande.room_id, 1)
        await matrix.join_and_read(world.instr2, demande.room_id, 1)

        # instr2 is deactivated: kicked from the demande.
        pending = await admin.command(f"!agent-desactiver {instr2}", "!confirmer")
        await admin.confirm(pending, "désactivé")
        await _wait_left(runner, demande.room_id, instr2)

        # The directory export: instr1 now has a new Matrix account; instr2 unchanged.
        new_client = await clients.client("instr1-nouveau")
        new_id = new_client.user_id
        csv_text = (
            HEADER
            + f"Instr1;Test;{emails[old_id]};{new_id};oui;non;95;CAF;{caf};\n"
            + f"Instr2;Test;{emails[instr2]};{instr2};oui;non;95;CAF;{caf};\n"
        )

        async def preview() -> str:
            n = count_from(admin.operator, admin.room_id, bot_id)
            await _send_file(
                admin.operator, admin.room_id, csv_text.encode(), "ops.csv", "text/csv"
            )
            await reply_with(admin.operator, admin.room_id, bot_id, "ops.csv", after=n)
            return await admin.command("!import-annuaire", "« ops.csv »")

        # 1. Refused in the preview, line by line, with the way out; nothing to confirm.
        refused = await preview()
        assert "refusé" in refused and "!confirmer" not in refused, refused
        assert "ligne 2" in refused and old_id in refused and reference in refused
        assert "!agent-desactiver" in refused and "ligne 3" not in refused
        async with runner.store.transaction() as tx:
            instr1 = await tx.get_agent_by_matrix_id(old_id)
            assert instr1 is not None and instr1.active
            assert await tx.get_agent_by_matrix_id(new_id) is None
            ledger = {p.matrix_id for p in await tx.participants(demande.id)}
        assert old_id in ledger and new_id not in ledger
        assert [d["lines"] for d in await _actions(runner, "directory_import_refused")] == [[2]]

        # 2. The audited way: deactivate (the old ID is kicked), then import.
        pending = await admin.command(f"!agent-desactiver {instr1.id}", "!confirmer")
        await admin.confirm(pending, "désactivé")
        await _wait_left(runner, demande.room_id, old_id)
        shown = await preview()
        assert "Aperçu" in shown and "!confirmer" in shown, shown
        for agent_id in (instr1.id, world.directory.agents["instr2"].id):
            assert f"reste désactivé (pour le réactiver : !agent-reactiver {agent_id})" in shown
        done = await admin.confirm(shown, "réussi")
        assert "désactivé" in done
        async with runner.store.transaction() as tx:
            moved = await tx.get_agent(instr1.id)
            still_out = await tx.get_agent_by_matrix_id(instr2)
            ledger = {p.matrix_id for p in await tx.participants(demande.id)}
        assert moved is not None and moved.matrix_id == new_id and not moved.active
        assert still_out is not None and not still_out.active
        assert old_id not in ledger and new_id not in ledger and instr2 not in ledger
        assert await _actions(runner, "agent_reactivated") == []
        changed = await _actions(runner, "agent_changed")
        assert {"agent": instr1.id, "field": "matrix", "via": "import"} in changed

        # 3. !agent-reactiver: the new ID joins the open demande and reads the dossier.
        back = await admin.command(f"!agent-reactiver {instr1.id}", "réactivé")
        assert reference in back
        await matrix.join_and_find(new_client, demande.room_id, "Dupontel")
        members = await runner.app.gateway.members(demande.room_id)
        assert members.get(old_id) == "leave" and members.get(new_id) == "join"
        async with runner.store.transaction() as tx:
            ledger = {p.matrix_id for p in await tx.participants(demande.id)}
        assert new_id in ledger and old_id not in ledger
        await runner.check_alive()


async def _wait_left(runner: AdminRunner, room_id: str, user_id: str) -> None:
    app = runner.app
    assert app is not None

    async def gone() -> bool:
        members = await app.gateway.members(room_id)
        return members.get(user_id) == "leave"

    await matrix.wait_for(gone, 30, f"{user_id} kicked")
