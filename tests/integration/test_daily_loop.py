"""The daily work on the real homeserver: « mes demandes », invitations, closing.

Real Synapse, the real bot, real nio E2EE clients (issue 10, sections 1, 3 and 4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import nio

from bot.devserver import LocalSynapse
from bot.domain.followup import FollowUpRules
from bot.domain.model import Role, Usefulness
from bot.domain.stats import export_csv
from bot.services.demande_room import CLOSE_NOTICE, CLOSE_POLL
from bot.services.spaces import ARCHIVE_KEY, SPACE_KEY
from bot.services.statistics import collect
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, next_reply, reply_with, say
from tests.support.email import email_bot, mailonly, relay
from tests.support.world import World, demande_of, make_world, open_demande, room_state


async def _cpam_instructeur(clients: matrix.Clients, world: World) -> nio.AsyncClient:
    """An instructeur of the CPAM (95), the second organisation a demande may go to."""
    cpam = await clients.client("cpam")
    await botsupport.add_agent(
        world.runner.store,
        world.directory,
        "cpam",
        matrix_id=cpam.user_id,
        roles=[Role.INSTRUCTEUR],
        group="cpam",
    )
    return cpam


async def test_mesdemandes_in_the_direct_chat_and_for_an_instructeur(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, instr1, bot_id = world.aidant, world.instr1, world.bot_id
        await _cpam_instructeur(clients, world)  # the other demande goes to the CPAM
        dm, ref_caf = await open_demande(world)
        _, ref_cpam = await open_demande(
            world, filled_form(organismes="CPAM", nom="Martinot", nir="2 61 03 95 123 456 45")
        )
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

        # The « Administration+ · suivi » rooms: the list is there too, but the usager's
        # name is searched only in the aidant's own direct chat.
        notices = runner.app.parts.admin.notices  # type: ignore[union-attr]
        for key, client in (("aidant", aidant), ("instr1", instr1)):
            agent = world.directory.agents[key]
            assert await notices.send(agent, "Test", "Bonjour.", key=f"hello-{key}")
            suivi = await notices.room_of(agent)
            await matrix.accept_invite(client, suivi)
            n = count_from(client, suivi, bot_id)
            await say(client, suivi, "!mesdemandes martinot" if key == "aidant" else "!md")
            answer = await reply_with(client, suivi, bot_id, "emande", after=n)
            if key == "aidant":
                assert "Aucune demande" in answer and ref_cpam not in answer, answer
            else:
                assert ref_caf in answer and "Vos demandes" in answer, answer


async def _space_ids(world: World, group: str) -> tuple[str, str]:
    gid = world.directory.groups[group].id
    for _ in range(300):
        async with world.runner.store.transaction() as tx:
            space = await tx.get_state(SPACE_KEY.format(group_id=gid))
            archive = await tx.get_state(ARCHIVE_KEY.format(group_id=gid))
        if space and archive:
            return space, archive
        await asyncio.sleep(0.1)
    raise AssertionError(f"no space for the group {group}")


async def _children(client: nio.AsyncClient, space: str) -> set[str]:
    state = await room_state(client, space)
    return {key for (etype, key), content in state.items() if etype == "m.space.child" and content}


async def _until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(what)


async def _is_set(get: Callable[[], Awaitable[str | None]]) -> bool:
    return await get() is not None


async def test_spaces_group_the_rooms_and_archive_the_closed_ones(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, instr1, bot_id = world.aidant, world.instr1, world.bot_id
        _, reference = await open_demande(world)
        room = (await demande_of(world, reference)).room_id
        fs_space, fs_archive = await _space_ids(world, "fs")
        caf_space, caf_archive = await _space_ids(world, "caf")

        # The aidant's structure and the CAF each get a space listing the room, with
        # the archive space nested in it; the agents are invited, nobody else.
        await matrix.accept_invite(aidant, fs_space)
        await matrix.accept_invite(instr1, caf_space)
        state = await room_state(aidant, fs_space)
        assert state[("m.room.create", "")]["type"] == "m.space"
        assert (
            state[("m.room.name", "")]["name"]
            == f"Administration+ · {world.directory.groups['fs'].name}"
        )
        assert await _children(aidant, fs_space) == {room, fs_archive}
        assert await _children(instr1, caf_space) == {room, caf_archive}
        members = await runner.app.gateway.members(caf_space)  # type: ignore[union-attr]
        assert aidant.user_id not in members and instr1.user_id in members

        # The directory moves: a newcomer to the CAF is invited, a deactivated agent leaves.
        newcomer = await clients.client("newcomer")
        await botsupport.add_agent(
            runner.store,
            world.directory,
            "newcomer",
            matrix_id=newcomer.user_id,
            roles=[Role.INSTRUCTEUR],
            group="caf",
        )
        async with runner.store.transaction() as tx:
            await tx.set_agent_active(world.directory.agents["instr2"].id, False)
        runner.app.parts.spaces.wake()  # type: ignore[union-attr]
        await matrix.accept_invite(newcomer, caf_space)

        async def instr2_removed() -> bool:
            now = await runner.app.gateway.members(caf_space)  # type: ignore[union-attr]
            return now.get(world.instr2.user_id) not in ("join", "invite")

        await _until("the deactivated agent out of the CAF's space", instr2_removed)

        # The room names its spaces, and its status is in its name.
        await matrix.accept_invite(aidant, room)
        room_st = await room_state(aidant, room)
        assert room_st[("m.space.parent", fs_space)]["via"] == ["localhost"]
        assert ("m.space.parent", caf_space) in room_st
        assert room_st[("m.room.name", "")]["name"] == f"Demande {reference} · CAF · 95 · nouvelle"

        await matrix.join_and_read(instr1, room, 1)
        n = count_from(aidant, room, bot_id)
        await say(instr1, room, "!traitee")
        await reply_with(aidant, room, bot_id, "a traité", after=n)

        async def named_treated() -> bool:
            name = (await room_state(aidant, room))[("m.room.name", "")]["name"]
            return bool(name.endswith(" · traitée"))

        await _until("the room renamed « traitée »", named_treated)

        # Closed: out of the way, in the archive spaces; and back on reopening.
        await say(aidant, room, "!clore utile")

        async def archived() -> bool:
            return room in await _children(aidant, fs_archive) and room not in await _children(
                aidant, fs_space
            )

        await matrix.accept_invite(aidant, fs_archive)
        await _until("the room moved to the archive space", archived)
        await matrix.accept_invite(instr1, caf_archive)

        async def placed() -> bool:
            # Each group in turn: the CAF's archive, then the room's parents.
            state = await room_state(aidant, room)
            return (
                room in await _children(instr1, caf_archive)
                and state.get(("m.space.parent", caf_space)) == {}
            )

        await _until("the room in the CAF's archive too", placed)
        room_st = await room_state(aidant, room)
        assert room_st[("m.space.parent", fs_archive)]["via"] == ["localhost"]
        assert room_st[("m.space.parent", fs_space)] == {}
        assert room_st[("m.room.name", "")]["name"].endswith(" · clôturée")
        flat = repr(await room_state(aidant, fs_space)) + repr(await room_state(aidant, fs_archive))
        for personal in ("Dupontel", "Jeanne", "1961"):
            assert personal not in flat


async def test_inviter_by_organisation_and_departement_by_email_and_suggestions(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        instr1, bot_id = world.instr1, world.bot_id
        store, directory = runner.store, world.directory
        cpam = await _cpam_instructeur(clients, world)
        await botsupport.add_group(store, directory, "cpam75", "cpam", ["75"])
        _, reference = await open_demande(world)
        # A colleague who joined the CAF after the opening (not routed to the demande).
        colleague = await clients.client("colleague")
        mail = f"{matrix.unique('elise')}@caf95.example.test"
        await botsupport.add_agent(
            store,
            directory,
            "colleague",
            matrix_id=colleague.user_id,
            email=mail,
            roles=[Role.INSTRUCTEUR],
            group="caf",
            first_name="Élise",
        )
        room = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(instr1, room, 1)

        async def command(text: str, expect: str) -> str:
            n = count_from(instr1, room, bot_id)
            await say(instr1, room, text)
            return await reply_with(instr1, room, bot_id, expect, after=n)

        unknown = await command("!inviter Caisse primaire de Cergy", "inconnu")
        assert directory.groups["cpam"].name in unknown
        assert directory.groups["cpam75"].name not in unknown  # only the 95's groups
        assert "Cpam Test" in await command("!inviter cpam 95", "Invité")
        assert "Élise Test" in await command(f"!inviter {mail.upper()}", "Invité")

        # « Invité » is said once the invitations are decided; the guard sends them next.
        async def both_invited() -> bool:
            members = await runner.app.gateway.members(room)  # type: ignore[union-attr]
            return members.get(cpam.user_id) == members.get(colleague.user_id) == "invite"

        await matrix.wait_for(both_invited, 30, "both agents invited")


async def _sent_event(world: World, key: str, demande_id: int) -> str:
    """The event ID of what the bot sent under the txn recorded at `key`."""
    for _ in range(300):
        async with world.runner.store.transaction() as tx:
            txn = await tx.get_state(key.format(demande_id=demande_id))
            event_id = await tx.message_event_id(txn) if txn else None
        if event_id:
            return event_id
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing sent for {key}")


async def test_closing_in_the_notice_s_words_by_poll_and_by_reaction(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, instr1, bot_id = world.aidant, world.instr1, world.bot_id
        rooms = []
        for _ in range(3):
            _, reference = await open_demande(world)
            demande = await demande_of(world, reference)
            await matrix.accept_invite(aidant, demande.room_id)
            await matrix.join_and_read(instr1, demande.room_id, 1)
            rooms.append(demande)

        async def command(client: nio.AsyncClient, room: str, text: str, expect: str) -> str:
            n = count_from(client, room, bot_id)
            await say(client, room, text)
            return await reply_with(client, room, bot_id, expect, after=n)

        first = rooms[0].room_id
        # Short aliases for the quick answers; each answer says each thing once.
        taken = await command(instr1, first, "!moi", "s'occupe")
        assert taken.endswith("s'occupe de la demande : elle passe au statut « en cours ».")
        treated = await command(instr1, first, "!fait", "a traité la demande")
        assert "!clore oui, !clore non ou !clore je ne sais pas" in treated
        assert treated.count("traité") == 1
        # !aide: what the aidant may do on a traitée demande, nothing of the instructeurs'.
        help_text = await command(aidant, first, "!aide", "Commandes disponibles")
        assert "!clore" in help_text and "!rouvrir" in help_text
        assert "!jemenoccupe" not in help_text and "!traitee" not in help_text
        closed = await command(aidant, first, "!clore je ne sais pas", "clôturé")
        assert closed.endswith(
            "a clôturé la demande. Réponse utile pour l'usager : je ne sais pas."
        )
        assert (await demande_of(world, rooms[0].reference)).usefulness == Usefulness.NESAISPAS

        # The poll: an answer in Element's (MSC3381) form closes the demande.
        second = rooms[1]
        await command(instr1, second.room_id, "!traitee", "a traité la demande")
        poll = await _sent_event(world, CLOSE_POLL, second.id)
        n = count_from(aidant, second.room_id, bot_id)
        resp = await aidant.room_send(
            second.room_id,
            "org.matrix.msc3381.poll.response",
            {
                "m.relates_to": {"rel_type": "m.reference", "event_id": poll},
                "org.matrix.msc3381.poll.response": {"answers": ["utile"]},
            },
            ignore_unverified_devices=True,
        )
        assert isinstance(resp, nio.RoomSendResponse), resp
        by_poll = await reply_with(aidant, second.room_id, bot_id, "clôturé", after=n)
        assert by_poll.endswith("Réponse utile pour l'usager : oui.")
        answer_id = resp.event_id

        async def poll_ended() -> bool:
            async with runner.store.transaction() as tx:
                return await tx.message_event_id(f"poll-end-{answer_id}") is not None

        await _until("the poll ended (m.poll.end)", poll_ended)
        # Closed already: another click changes nothing and gets no answer.
        again = await aidant.room_send(
            second.room_id,
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": poll, "key": "👎"}},
            ignore_unverified_devices=True,
        )
        assert isinstance(again, nio.RoomSendResponse), again

        # A reaction on the « traitée » notice: 👎 is « non ».
        third = rooms[2]
        await command(instr1, third.room_id, "!traitee", "a traité la demande")
        notice = await _sent_event(world, CLOSE_NOTICE, third.id)
        n = count_from(aidant, third.room_id, bot_id)
        resp = await aidant.room_send(
            third.room_id,
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": notice, "key": "👎"}},
            ignore_unverified_devices=True,
        )
        assert isinstance(resp, nio.RoomSendResponse), resp
        by_reaction = await reply_with(aidant, third.room_id, bot_id, "clôturé", after=n)
        assert by_reaction.endswith("Réponse utile pour l'usager : non.")
        assert (await demande_of(world, third.reference)).usefulness == Usefulness.INUTILE
        assert (await demande_of(world, second.reference)).usefulness == Usefulness.UTILE


async def test_completer_amends_the_dossier_for_everyone_by_email_too(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, instr1, bot_id = world.aidant, world.instr1, world.bot_id
        sophie = mailonly(world)
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        room = demande.room_id
        await matrix.accept_invite(aidant, room)
        await matrix.join_and_read(instr1, room, 1)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")

        async def command(client: nio.AsyncClient, text: str, expect: str) -> str:
            n = count_from(client, room, bot_id)
            await say(client, room, text)
            return await reply_with(client, room, bot_id, expect, after=n)

        refused = await command(instr1, "!completer nom : Martin", "Seul l'aidant")
        assert "Martin" not in refused
        wrong = await command(aidant, "!completer NIR : 2 61 03 95 123 456 99", "pas modifié")
        assert "NIR" in wrong
        n_instr = count_from(instr1, room, bot_id)
        await say(aidant, room, "!completer date de naissance : 13/03/1961")
        updated = await reply_with(instr1, room, bot_id, "Dossier mis à jour", after=n_instr)
        assert "date de naissance : 12/03/1961 → 13/03/1961" in updated
        async with runner.store.transaction() as tx:
            form = await tx.load_form(demande.id)
            entries = await tx.audit_entries(reference=reference)
        assert form.usager.date_naissance.day == 13
        [amended] = [e for e in entries if e.action == "dossier_amended"]
        assert "1961" not in repr(amended)  # the audit names the field, not the value
        await sink.wait_for(
            lambda: any("13/03/1961" in m.text for m in sink.to(sophie)), what="the update email"
        )


async def test_companion_room_for_the_instructeurs_only_and_procedure_standard(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, instr1, instr2, bot_id = world.aidant, world.instr1, world.instr2, world.bot_id
        cpam = await _cpam_instructeur(clients, world)
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        room = demande.room_id
        await matrix.accept_invite(aidant, room)
        await matrix.join_and_read(instr1, room, 1)

        async def command(client: nio.AsyncClient, text: str, expect: str) -> str:
            n = count_from(client, room, bot_id)
            await say(client, room, text)
            return await reply_with(client, room, bot_id, expect, after=n)

        assert "Seuls les instructeurs" in await command(aidant, "!entrenous", "Seuls")
        await command(instr1, "!entreinstructeurs", "l'aidant ne le voit pas")

        async def companion_id() -> str | None:
            async with runner.store.transaction() as tx:
                return await tx.companion_room(demande.id)

        await _until("the companion room", lambda: _is_set(companion_id))
        side = await companion_id()
        assert side is not None
        await matrix.accept_invite(instr1, side)
        welcome = await next_reply(instr1, side, bot_id, after=0)
        assert "l'aidant ne le voit pas" in welcome
        await matrix.accept_invite(instr2, side)
        state = await room_state(instr1, side)
        assert state[("m.room.encryption", "")]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert state[("m.room.join_rules", "")]["join_rule"] == "invite"
        assert ("fr.aplus.demande", "") not in state
        members = await runner.app.gateway.members(side)  # type: ignore[union-attr]
        assert aidant.user_id not in members
        join = await aidant.join(side)
        assert isinstance(join, nio.JoinError), join  # invitation only

        # The agents confer; the demande's status does not move, nothing reaches the aidant.
        await say(instr1, side, "Entre nous : le dossier relève plutôt de la CPAM.")
        texts = await matrix.read_texts(instr2, side, 1)
        assert any("relève plutôt de la CPAM" in t for t in texts)
        assert (await demande_of(world, reference)).status.value == "nouvelle"

        # A group invited to the demande is invited to the companion room too.
        await command(instr1, "!inviter CPAM 95", "Invité")
        await matrix.accept_invite(cpam, side)
        assert "relève plutôt" not in " ".join(matrix.texts(cpam, side))  # from its arrival

        # « Procédure standard »: flagged by an instructeur, counted, exported.
        assert "Seuls les instructeurs" in await command(aidant, "!standard", "Seuls")
        await command(instr1, "!procedurestandard", "procédure standard")
        async with runner.store.transaction() as tx:
            assert demande.id in await tx.procedure_standard_ids()
            stats = await collect(tx, demande.times.created_at, FollowUpRules())
        [mine] = [s for s in stats if s.reference == reference]
        assert mine.procedure_standard
        table = export_csv([mine]).decode("utf-8-sig")
        assert table.splitlines()[1].split(";")[7] == "Non"
