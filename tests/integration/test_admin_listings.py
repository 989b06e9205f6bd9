"""National-size listings on the real homeserver (issue 12, item 6): with 8,000 agents in
800 groups, `!agents` and `!groupes` answer in pages that stay far under the 64 KiB event
limit (measured on the encrypted event the homeserver serves), each with every row in a
CSV file; agents are found by name, email, Matrix ID and group. The CSV import's
preview and its list of problems stay within the limit for a national file as well."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from urllib.parse import quote

import aiohttp
from sqlalchemy import insert

from bot.commands.framework import LISTING_BUDGET, message_size
from bot.devserver import LocalSynapse
from bot.store.models import AgentRow, GroupRow
from tests.integration.test_admin_room import (
    Admin,
    _admin,
    _download,
    _next_file,
    _send_file,
    admin_bot,
)
from tests.integration.test_store import NOW, make_form
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say

AGENTS, PER_GROUP = 8000, 10
EVENT_LIMIT = 65_536


async def _national_directory(admin: Admin) -> None:
    store = admin.runner.store
    async with store.engine.begin() as conn:
        groups = [
            {"name": f"CAF Nationale {g:03d}", "organisation_id": "caf", "departements": "95"}
            for g in range(AGENTS // PER_GROUP)
        ]
        await conn.execute(insert(GroupRow), groups)
    async with store.transaction() as tx:
        ids = {g.name: g.id for g in await tx.list_groups()}
    async with store.engine.begin() as conn:
        agents = [
            {
                "first_name": "Élise",
                "last_name": f"Nom{i:04d}",
                "email": f"agent{i:04d}@caf.example.test",
                "matrix_id": f"@agent{i:04d}:caf.example.test" if i % 2 else None,
                "group_id": ids[f"CAF Nationale {i // PER_GROUP:03d}"],
                "roles": "instructeur",
                "active": True,
            }
            for i in range(AGENTS)
        ]
        await conn.execute(insert(AgentRow), agents)


async def _many_demandes(admin: Admin, count: int) -> None:
    """Demandes straight into the store, marked built (no room is ever created for them)."""
    aidant = admin.world.directory.agents["aidant"]
    caf = admin.world.directory.groups["caf"].id
    async with admin.runner.store.transaction() as tx:
        for _ in range(count):
            demande = await tx.create_demande(
                reference=await tx.next_reference(2026),
                form=make_form(),
                aidant_agent_id=aidant.id,
                group_ids=[caf],
                draft_id=None,
                now=NOW,
            )
            await tx.set_creation_step(demande.id, "ready")


async def _answer(admin: Admin, text: str, expect: str) -> tuple[str, int]:
    """The bot's answer, and the size of its encrypted event as the homeserver serves it."""
    client, room_id = admin.operator, admin.room_id
    n = count_from(client, room_id, admin.bot_id)
    await say(client, room_id, text)
    body = await reply_with(client, room_id, admin.bot_id, expect, after=n)
    event = next(
        e
        for e in reversed(matrix.inbox(client).events(room_id))
        if e.sender == admin.bot_id and e.body == body
    )
    assert message_size(body, getattr(event, "formatted_body", None)) <= LISTING_BUDGET
    path = f"/_matrix/client/v3/rooms/{quote(room_id)}/event/{quote(event.event_id)}"
    url = client.homeserver + path
    headers = {"Authorization": f"Bearer {client.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        raw = await resp.read()
    assert json.loads(raw)["type"] == "m.room.encrypted"
    return body, len(raw)


async def test_national_listings_answer_within_the_event_size_limit(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with admin_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        admin = await _admin(clients, runner)
        await _national_directory(admin)

        # !agents: the first page, within the limit, and every agent in the file.
        files = len(admin.files)
        first, size = await _answer(admin, "!agents", "Agents (")
        assert size < EVENT_LIMIT // 2, size
        total = int(re.search(r"Agents \((\d+)\)", first).group(1))  # type: ignore[union-attr]
        assert total > AGENTS and "page 1/" in first and "!agents page=2" in first
        assert "Nom0000" in first
        listed = await _download(admin.operator, await _next_file(admin, files))
        table = list(csv.reader(io.StringIO(listed.decode("utf-8-sig")), delimiter=";"))
        assert (
            len(table) == total + 1 and sum(any("Nom7999" in c for c in row) for row in table) == 1
        )

        later, size = await _answer(admin, "!agents page=3", "page 3/")
        assert size < EVENT_LIMIT // 2 and "Nom0000" not in later
        await _answer(admin, "!agents page=9999", "inexistante")

        # Found by name, by email, by Matrix ID, by group (as typed, or loosely).
        by_name, _ = await _answer(admin, "!agents nom4321", "Agents")
        assert "agent4321@caf.example.test" in by_name and "(1)" in by_name
        by_email, _ = await _answer(admin, "!agents AGENT0042@caf.example.test", "Agents")
        assert "Nom0042" in by_email and "(1)" in by_email
        by_matrix, _ = await _answer(admin, "!agents @agent0043:caf.example.test", "Agents")
        assert "Nom0043" in by_matrix and "(1)" in by_matrix
        by_group, _ = await _answer(admin, '!agents "CAF Nationale 123"', "Agents")
        assert "(10)" in by_group and "Nom1230" in by_group and "Nom1239" in by_group
        loose, _ = await _answer(admin, "!agents nationale 123 elise", "Agents")
        assert "(10)" in loose and "Nom1235" in loose
        await _answer(admin, "!agents personne-de-ce-nom", "Aucun")

        # !groupes: 800 groups, paged too.
        files = len(admin.files)
        groups, size = await _answer(admin, "!groupes", "Groupes (")
        assert size < EVENT_LIMIT // 2 and "page 1/" in groups and "!groupes page=2" in groups
        listed = await _download(admin.operator, await _next_file(admin, files))
        assert listed.decode("utf-8-sig").count("CAF Nationale") == AGENTS // PER_GROUP
        one, _ = await _answer(admin, "!groupes nationale 077", "Groupes")
        assert "(1)" in one and "CAF Nationale 077" in one

        # !demandes: 300 demandes (metadata only), paged, every one in the file.
        await _many_demandes(admin, 300)
        files = len(admin.files)
        listed_demandes, size = await _answer(admin, "!demandes", "Demandes")
        assert size < EVENT_LIMIT // 2 and ": 300 — page 1/" in listed_demandes
        assert "!demandes page=2" in listed_demandes
        export = await _download(admin.operator, await _next_file(admin, files))
        assert export.decode("utf-8-sig").count("A-2026-") == 300
        second, _ = await _answer(admin, "!demandes territoire=75 page=2", "page 2/")
        assert "!demandes territoire=75 page=3" in second

        # The import's preview and its refusals, for a national file, too.
        header = "Prénom;Nom;Email;Instructeur;Responsable;Territoire;Organisation;Groupe;BAL\n"
        bad = header + "".join(
            f"P{i};N{i};pas-une-adresse-{i};oui;non;95;CAF;G;\n" for i in range(3000)
        )
        good = header + "".join(
            f"P{i};N{i};nouveau{i}@caf.example.test;oui;non;95;CAF;CAF Nationale 001;\n"
            for i in range(3000)
        )
        for data, name, expect in ((bad, "faux.csv", "refusé"), (good, "bon.csv", "Aperçu")):
            n = count_from(admin.operator, admin.room_id, admin.bot_id)
            await _send_file(admin.operator, admin.room_id, data.encode(), name, "text/csv")
            await reply_with(admin.operator, admin.room_id, admin.bot_id, name, after=n)
            files = len(admin.files)  # past the operator's own file
            shown, size = await _answer(admin, "!import-annuaire", expect)
            assert size < EVENT_LIMIT // 2 and "3000" in shown, shown[:300]
            attached = await _download(admin.operator, await _next_file(admin, files))
            assert attached.decode("utf-8-sig").count("\r\n") == 3001
        assert "!confirmer" in shown
        await runner.check_alive()
