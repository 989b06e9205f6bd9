"""A day in the life of an aidant and the instructeurs, on the real homeserver (issue 10,
« How it is proven »).

Real Synapse, the real bot, real nio E2EE clients. The aidant opens three demandes (one
with two one-line corrections, one by the guided path, one with a letter attached), the
instructeurs answer, one demande is
re-routed with `!pasleboninterlocuteur` then `!inviter CPAM 95`, and the CPAM agent —
whose device appears only then — reads every earlier message; `!mesdemandes` shows each
status and its link, the spaces list the rooms, the aidant is mentioned when a demande
is traitée and closes it with `!clore oui`, and the closed room moves to the archive.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nio

from bot.devserver import LocalSynapse
from bot.domain.model import Role, Status, Usefulness
from bot.services.spaces import ARCHIVE_KEY, SPACE_KEY
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, next_reply, reply_with, say
from tests.support.e2ee import post_file
from tests.support.world import World, demande_of, make_world, room_state


async def _until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(what)


async def _children(client: nio.AsyncClient, space: str) -> set[str]:
    state = await room_state(client, space)
    return {key for (etype, key), content in state.items() if etype == "m.space.child" and content}


async def _state_value(world: World, key: str) -> str:
    found: list[str] = []

    async def ready() -> bool:
        async with world.runner.store.transaction() as tx:
            value = await tx.get_state(key)
        if value:
            found.append(value)
        return bool(value)

    await _until(f"bot state {key}", ready)
    return found[-1]


def _bot_event(client: nio.AsyncClient, room: str, bot_id: str, text: str) -> dict[str, Any]:
    for event in reversed(matrix.inbox(client).events(room)):
        if event.sender == bot_id and text in event.body:
            content: dict[str, Any] = event.source["content"]
            return content
    raise AssertionError(f"no bot message with {text!r}")


async def test_a_day_in_the_life(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, instr1, instr2, bot_id = world.aidant, world.instr1, world.instr2, world.bot_id
        # The CPAM agent has an account, but opens a session only when brought in.
        cpam_user = await clients.user("cpam")
        await botsupport.add_agent(
            runner.store,
            world.directory,
            "cpam",
            matrix_id=cpam_user.user_id,
            roles=[Role.INSTRUCTEUR],
            group="cpam",
            first_name="Céline",
        )

        # --- morning: the aidant opens three demandes from their direct chat
        dm = await botsupport.open_direct_chat(aidant, bot_id)

        async def in_dm(text: str, expect: str) -> str:
            n = count_from(aidant, dm, bot_id)
            await say(aidant, dm, text)
            return await reply_with(aidant, dm, bot_id, expect, after=n)

        async def ask(text: str) -> str:
            n = count_from(aidant, dm, bot_id)
            await say(aidant, dm, text)
            return await next_reply(aidant, dm, bot_id, after=n)

        def reference_of(opened: str) -> str:
            assert "ouverte" in opened, opened
            return opened.split("Demande ", 1)[1].split(" ", 1)[0]

        # A: a form with two mistakes, corrected by two one-line answers.
        first = await ask(filled_form(organismes="CAFF", naissance="12/13/1961"))
        assert "Il reste 2 points" in first, first
        assert "Il reste un point" in await ask("organismes : CAF")
        recap = await ask("date de naissance : 12/03/1961")
        assert "!confirmer" in recap, recap
        ref_a = reference_of(await ask("!confirmer"))

        # B: the guided path, one question at a time.
        assert "Dans quel département" in await ask("!guider")
        for answer in (
            "95",
            "CAF",
            "Remboursement de soins",
            "Paul",
            "Martinot",
            "12/03/1961",
            "oral",
            "aujourd'hui",
            "La feuille de soins n'est pas remboursée.",
        ):
            await ask(answer)
        guided = await ask("oui")
        assert "!confirmer" in guided and "Martinot" in guided, guided
        ref_b = reference_of(await ask("!confirmer"))

        # C: the usager's letter sent in the chat while the draft is open.
        await ask("nom : Lefèvre")
        n = count_from(aidant, dm, bot_id)
        letter = b"%PDF-1.4 Courrier de la CAF " + os.urandom(2000)
        await post_file(aidant, dm, letter, name="courrier-caf.pdf")
        kept = await next_reply(aidant, dm, bot_id, after=n)
        assert "courrier-caf.pdf" in kept, kept
        with_letter = await ask(filled_form(nom="Lefèvre", prenom="Anne", objet="Prime d'activité"))
        assert "courrier-caf.pdf" in with_letter and "!confirmer" in with_letter, with_letter
        ref_c = reference_of(await ask("!confirmer"))
        a, b, c = [await demande_of(world, r) for r in (ref_a, ref_b, ref_c)]
        files: list[nio.RoomEncryptedFile] = []
        instr1.add_event_callback(lambda _room, event: files.append(event), nio.RoomEncryptedFile)
        for d in (a, b, c):
            await matrix.accept_invite(aidant, d.room_id)
            await matrix.join_and_read(instr1, d.room_id, 1)
        # The letter follows C's dossier in its room, encrypted.
        await matrix.sync_until(
            instr1,
            lambda: any(f.body == "courrier-caf.pdf" and f.sender == bot_id for f in files),
            what="the letter in C's room",
        )

        async def command(client: nio.AsyncClient, room: str, text: str, expect: str) -> str:
            n = count_from(client, room, bot_id)
            await say(client, room, text)
            return await reply_with(client, room, bot_id, expect, after=n)

        # --- the instructeurs answer
        await say(instr1, a.room_id, "Bonjour, je regarde le dossier de l'allocation.")
        await reply_with(aidant, a.room_id, bot_id, "en cours")
        await matrix.join_and_read(instr2, c.room_id, 1)
        await command(instr2, c.room_id, "!moi", "s'occupe de la demande")

        # --- demande B is not for the CAF: re-routed to the CPAM of the 95
        await say(instr1, b.room_id, "Bonjour, avez-vous la feuille de soins ?")
        await say(aidant, b.room_id, "Oui, l'usager l'a envoyée en mars.")
        await command(instr1, b.room_id, "!pasmoi", "pas être le bon interlocuteur")
        invited = await command(instr1, b.room_id, "!inviter CPAM 95", "Invité")
        assert "Céline Test" in invited
        await say(aidant, b.room_id, "Merci, j'attends la CPAM.")

        # Her first session starts now, after every message above was sent.
        cpam = await clients.client(cpam_user)
        await matrix.accept_invite(cpam, b.room_id)
        copy = await reply_with(cpam, b.room_id, bot_id, "Merci, j'attends la CPAM.", wait=60)
        assert "Copie des échanges" in copy
        box = " ".join(e.body for e in matrix.inbox(cpam).events(b.room_id) if e.sender == bot_id)
        for earlier in (
            "avez-vous la feuille de soins ?",
            "l'usager l'a envoyée en mars.",
            "Invité(s) : Céline Test",
        ):
            assert earlier in box, earlier
        assert "Martinot" in box  # the dossier, re-posted for her
        await command(cpam, b.room_id, "!jemenoccupe", "s'occupe de la demande")

        # --- noon: « mes demandes » shows each status, who acts, and the links
        board = await in_dm("!mesdemandes", "Vos demandes")
        assert "Vos demandes ouvertes : 3." in board, board
        for d, status in ((a, "en cours"), (b, "en cours"), (c, "en cours")):
            assert f"{d.reference} · {status}" in board
            assert f"https://matrix.to/#/{d.room_id}" in board
        by_group = await in_dm("!mesdemandes cpam", "Vos demandes")
        assert ref_b in by_group and ref_a not in by_group  # the group invited to B
        found = await in_dm("!mesdemandes lefèvre", "Vos demandes")
        assert ref_c in found and ref_a not in found and ref_b not in found

        # --- the spaces list the rooms: the aidant's structure, the CAF, the CPAM
        fs = world.directory.groups["fs"].id
        fs_space = await _state_value(world, SPACE_KEY.format(group_id=fs))
        fs_archive = await _state_value(world, ARCHIVE_KEY.format(group_id=fs))
        cpam_space = await _state_value(
            world, SPACE_KEY.format(group_id=world.directory.groups["cpam"].id)
        )
        await matrix.accept_invite(aidant, fs_space)

        async def all_three() -> bool:
            return {a.room_id, b.room_id, c.room_id} <= await _children(aidant, fs_space)

        await _until("the three rooms in the aidant's space", all_three)
        await matrix.accept_invite(cpam, cpam_space)

        async def b_in_cpam_space() -> bool:
            return b.room_id in await _children(cpam, cpam_space)

        await _until("demande B in the CPAM's space", b_in_cpam_space)
        names = {
            d.reference: (await room_state(aidant, d.room_id))[("m.room.name", "")]["name"]
            for d in (a, b, c)
        }

        async def named_en_cours() -> bool:
            for d in (a, b, c):
                state = await room_state(aidant, d.room_id)
                names[d.reference] = state[("m.room.name", "")]["name"]
            return all(n.endswith(" · en cours") for n in names.values())

        await _until("the rooms named « en cours »", named_en_cours)

        # --- afternoon: A is traitée; the aidant is mentioned, and closes it
        n_aidant = count_from(aidant, a.room_id, bot_id)
        await say(instr1, a.room_id, "!traitee")
        treated = await reply_with(aidant, a.room_id, bot_id, "a traité la demande", after=n_aidant)
        assert "!clore oui" in treated
        content = _bot_event(aidant, a.room_id, bot_id, "a traité la demande")
        assert content["msgtype"] == "m.text"
        assert content["m.mentions"] == {"user_ids": [aidant.user_id]}
        after_treated = await in_dm("!mesdemandes traitée", "Vos demandes")
        assert f"{ref_a} · traitée" in after_treated
        assert "à vous d'agir : clore ou répondre" in after_treated
        closed = await command(aidant, a.room_id, "!clore oui", "a clôturé la demande")
        assert closed.endswith("Réponse utile pour l'usager : oui.")
        done = await demande_of(world, ref_a)
        assert done.status is Status.CLOTUREE and done.usefulness is Usefulness.UTILE

        # --- evening: A is out of the way, in the archive; the board follows
        await matrix.accept_invite(aidant, fs_archive)

        async def archived() -> bool:
            return a.room_id in await _children(
                aidant, fs_archive
            ) and a.room_id not in await _children(aidant, fs_space)

        await _until("demande A in the archive space", archived)
        evening = await in_dm("!mesdemandes", "Vos demandes")
        assert "Vos demandes ouvertes : 2." in evening and ref_a not in evening
        archive = await in_dm("!mesdemandes clôturée", "Vos demandes")
        assert f"{ref_a} · clôturée" in archive
        await runner.check_alive()
