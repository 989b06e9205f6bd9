"""The central loop on the real homeserver: an aidant opens a demande, the room is built.

Real Synapse, the real bot (in this test's event loop), real nio E2EE clients
for the aidant, the instructeurs and the intruder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nio
import pytest

from bot.devserver import LocalSynapse
from bot.domain.model import Role, Status
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, next_reply, reply_with, say
from tests.support.world import (
    audit_actions,
    demande_of,
    make_world,
    open_demande,
    room_state,
)


async def test_open_demande_full_scenario(
    synapse: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Everything the bot logs, down to DEBUG, is checked for personal data at the end.
    caplog.set_level(logging.DEBUG, logger="bot")
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, instr1, instr2, bot_id = world.aidant, world.instr1, world.instr2, world.bot_id

        dm = await botsupport.open_direct_chat(aidant, bot_id)
        await say(aidant, dm, "!demande")
        template = await next_reply(aidant, dm, bot_id, after=0)
        assert "territoire" in template and "J'atteste avoir recueilli" in template

        await say(aidant, dm, filled_form(nir="2 61 03 95 123 456 45"))
        recap = await next_reply(aidant, dm, bot_id, after=1)
        assert "!confirmer" in recap and "Dupontel" in recap
        recap_reference = recap.split("Demande ", 1)[1].split(" ", 1)[0]

        await say(aidant, dm, "!confirmer")
        opened = await next_reply(aidant, dm, bot_id, after=2)
        assert "ouverte" in opened, opened
        reference = opened.split("Demande ", 1)[1].split(" ", 1)[0]
        assert reference == recap_reference  # the recap announced it
        demande = await demande_of(world, reference)
        assert demande.creation_step == "ready"
        assert demande.status == Status.NOUVELLE
        room_id = demande.room_id
        assert room_id

        # --- the room, field by field, as the homeserver holds it (state is NOT encrypted)
        await matrix.accept_invite(aidant, room_id)
        state = await room_state(aidant, room_id)
        assert state[("m.room.encryption", "")]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert state[("m.room.join_rules", "")]["join_rule"] == "invite"
        assert state[("m.room.guest_access", "")]["guest_access"] == "forbidden"
        assert state[("m.room.history_visibility", "")]["history_visibility"] == "invited"
        assert state[("m.room.name", "")]["name"] == f"Demande {reference} · CAF · 95 · nouvelle"
        assert state[("fr.aplus.demande", "")] == {"reference": reference, "version": 1}
        acl = state[("m.room.server_acl", "")]
        assert acl["allow"] == ["localhost"] and acl["allow_ip_literals"] is False
        pl = state[("m.room.power_levels", "")]
        assert bot_id not in pl.get("users", {})  # room v12: the creator is above all levels
        for key in ("invite", "kick", "ban", "redact", "state_default"):
            assert pl[key] == 100, key
        assert pl.get("users_default", 0) == 0 and pl.get("events_default", 0) == 0
        create = state[("m.room.create", "")]
        assert create.get("room_version") == "12"
        flat = repr(state)
        for personal in ("Dupontel", "Jeanne", "1961", "123 456", "allocation logement"):
            assert personal not in flat, personal

        # --- invitations: aidant and both instructeurs, never the email-only agent
        members = await runner.app.gateway.members(room_id)  # type: ignore[union-attr]
        assert members[instr1.user_id] == "invite" and members[instr2.user_id] == "invite"
        assert set(members) == {bot_id, aidant.user_id, instr1.user_id, instr2.user_id}

        # --- instructeurs decrypt the dossier, once
        texts = await matrix.join_and_read(instr1, room_id, 1)
        assert "Dupontel" in texts[0] and reference in texts[0]
        assert "Sophie" in texts[0] and "par courriel" in texts[0]
        texts2 = await matrix.join_and_read(instr2, room_id, 1)
        assert texts2[0] == texts[0]

        # --- an instructeur's answer moves the demande to « en cours »
        n_aidant = count_from(aidant, room_id, bot_id)
        n = count_from(instr1, room_id, bot_id)
        await say(instr1, room_id, "Bonjour, je regarde le dossier.")
        notice = await next_reply(aidant, room_id, bot_id, after=n_aidant)
        assert "en cours" in notice
        assert "en cours" in await next_reply(instr1, room_id, bot_id, after=n)
        n += 1
        assert (await demande_of(world, reference)).status == Status.EN_COURS

        # --- !statut, !aide
        async def command(client: nio.AsyncClient, text: str, expect: str) -> str:
            n = count_from(client, room_id, bot_id)
            await say(client, room_id, text)
            return await reply_with(client, room_id, bot_id, expect, after=n)

        status_text = await command(instr1, "!statut", reference)
        assert "en cours" in status_text
        help_text = await command(instr1, "!aide", "!inviter")
        # Only what applies to an instructeur on an open demande.
        assert "!traitee" in help_text and "!clore" not in help_text
        assert "!rouvrir" not in help_text

        # --- !inviter a group: its instructeur is added to the ledger and invited
        instr3 = await clients.client("instr3")
        await botsupport.add_agent(
            runner.store,
            world.directory,
            "instr3",
            matrix_id=instr3.user_id,
            roles=[Role.INSTRUCTEUR],
            group="cpam",
        )
        cpam_name = world.directory.groups["cpam"].name
        await command(instr1, f"!inviter {cpam_name}", "Invité")
        reposted = await matrix.join_and_find(instr3, room_id, "Dossier republié")
        assert "Dupontel" in reposted

        # --- an unknown group is refused with the reason; inviting twice too
        await command(instr1, "!inviter Groupe qui n'existe pas", "inconnu")
        await command(instr1, f"!inviter {cpam_name}", "refusée")

        # --- !traitee, then the aidant closes, reopens, closes again
        await command(instr1, "!traitee", "a traité la demande")
        await command(instr1, "!clore utile", "Seul l'aidant")
        assert "command_refused" in await audit_actions(world, reference)
        await command(aidant, "!clore utile", "a clôturé la demande")
        demande = await demande_of(world, reference)
        assert demande.status == Status.CLOTUREE and demande.usefulness is not None
        assert demande.times.treated_at is not None and demande.times.closed_at is not None
        await command(aidant, "!rouvrir", "a rouvert la demande")
        assert (await demande_of(world, reference)).status == Status.EN_COURS
        await command(aidant, "!clore nesaispas", "a clôturé la demande")
        # A message from the aidant reopens a closed demande.
        n_a = count_from(aidant, room_id, bot_id)
        await say(aidant, room_id, "En fait, l'usager a reçu un nouveau courrier.")
        await reply_with(aidant, room_id, bot_id, "rouverte", after=n_a)
        assert (await demande_of(world, reference)).status == Status.EN_COURS

        actions = await audit_actions(world, reference)
        for expected in ("demande_opened", "mandate_recorded", "room_created", "participant_added"):
            assert expected in actions, expected
        await runner.check_alive()
    logged = caplog.text
    assert "demande A-" in logged  # the bot did log, at DEBUG and above
    for personal in ("Dupontel", "Jeanne", "12/03/1961", "123 456", "allocation logement"):
        assert personal not in logged, personal


async def test_intruder_is_kicked_then_banned_and_power_levels_restored(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(world.instr1, room_id, 1)

        # A homeserver admin grants a local user power in the room (the Tchap lesson).
        admin = await clients.user("admin", admin=True)
        intruder = await clients.client("intruder")
        resp = await synapse.admin_request(
            "POST",
            f"/_synapse/admin/v1/rooms/{room_id}/make_room_admin",
            admin.access_token,
            json={"user_id": intruder.user_id},
        )
        assert resp.ok, resp

        async def intruder_gone() -> bool:
            members = await runner.app.gateway.members(room_id)  # type: ignore[union-attr]
            return members.get(intruder.user_id) in ("leave", "ban", None)

        await matrix.wait_for(intruder_gone, 30, "the intruder removed")
        pl_ok = False

        async def power_levels_restored() -> bool:
            nonlocal pl_ok
            pl = await runner.app.gateway.state_event(room_id, "m.room.power_levels")  # type: ignore[union-attr]
            pl_ok = pl is not None and intruder.user_id not in (pl.get("users") or {})
            return pl_ok

        await matrix.wait_for(power_levels_restored, 30, "power levels reverted")

        # The intruder comes back (joins through the invite the admin can make): banned.
        resp = await synapse.admin_request(
            "POST",
            f"/_synapse/admin/v1/rooms/{room_id}/make_room_admin",
            admin.access_token,
            json={"user_id": intruder.user_id},
        )
        assert resp.ok, resp

        async def intruder_banned() -> bool:
            members = await runner.app.gateway.members(room_id)  # type: ignore[union-attr]
            return members.get(intruder.user_id) == "ban"

        await matrix.wait_for(intruder_banned, 30, "the intruder banned")

        async def ban_audited() -> bool:
            return "intruder_banned" in await audit_actions(world, reference)

        await matrix.wait_for(ban_audited, 10, "the ban audited")
        actions = await audit_actions(world, reference)
        assert "intruder_detected" in actions
        assert "intruder_kicked" in actions and "intruder_banned" in actions
        assert "state_reverted" in actions

        # The room keeps working for the participants, and the intruder never got a key.
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, "!statut")
        await reply_with(world.instr1, room_id, world.bot_id, reference, after=n)
        await runner.check_alive()


async def test_bad_forms_and_refusals(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, bot_id = world.aidant, world.bot_id
        dm = await botsupport.open_direct_chat(aidant, bot_id)

        # Every problem at once, nothing created.
        bad = filled_form(
            territoire="9Z",
            naissance="01/01/2099",
            date_mandat="01/01/2099",
            attestation=False,
            objet="x" * 170,
        )
        await say(aidant, dm, bad)
        errors = await next_reply(aidant, dm, bot_id, after=0)
        assert "9Z" in errors
        assert "mandat" in errors.lower() and "atteste" in errors.lower()
        assert "objet" in errors.lower() and "naissance" in errors.lower()

        # A valid form where no group has instructeurs for the organisation in that territory.
        await say(aidant, dm, filled_form(territoire="13"))
        no_group = await next_reply(aidant, dm, bot_id, after=1)
        assert "aucun groupe" in no_group.lower()

        # The draft is kept, incomplete: !confirmer says so; !annuler drops it; then
        # there is nothing to cancel any more.
        await say(aidant, dm, "!confirmer")
        assert "rien à confirmer" in (await next_reply(aidant, dm, bot_id, after=2)).lower()
        await say(aidant, dm, "!annuler")
        assert "annulée" in (await next_reply(aidant, dm, bot_id, after=3))
        await say(aidant, dm, "!annuler")
        assert "aucune demande" in (await next_reply(aidant, dm, bot_id, after=4)).lower()

        # A draft can be cancelled.
        await say(aidant, dm, filled_form())
        await next_reply(aidant, dm, bot_id, after=5)
        await say(aidant, dm, "!annuler")
        assert "annulée" in (await next_reply(aidant, dm, bot_id, after=6))
        await say(aidant, dm, "!confirmer")
        assert "rien à confirmer" in (await next_reply(aidant, dm, bot_id, after=7)).lower()

        # An unknown command gets a suggestion.
        await say(aidant, dm, "!demnde")
        assert "!demande" in (await next_reply(aidant, dm, bot_id, after=8))

        async with runner.store.transaction() as tx:
            assert await tx.list_demandes() == []

        # An instructeur (not an aidant) is refused politely, and it is audited.
        dm2 = await botsupport.open_direct_chat(world.instr1, bot_id)
        await say(world.instr1, dm2, "!demande")
        refusal = await next_reply(world.instr1, dm2, bot_id, after=0)
        assert "Seuls les aidants" in refusal
        assert "demande_refused_not_aidant" in await audit_actions(world)

        # An unencrypted direct chat: the form is refused and the reason given.
        resp = await aidant.room_create(
            is_direct=True, invite=[bot_id], preset=nio.RoomPreset.trusted_private_chat
        )
        assert isinstance(resp, nio.RoomCreateResponse)
        clear_dm = resp.room_id
        await matrix.sync_until(
            aidant, lambda: matrix.has_joined(aidant, clear_dm, bot_id), what="bot in clear DM"
        )
        await aidant.room_send(
            clear_dm, "m.room.message", {"msgtype": "m.text", "body": filled_form()}
        )
        why = await next_reply(aidant, clear_dm, bot_id, after=0)
        assert "chiffré" in why and "Dupontel" not in why
        assert "form_refused_unencrypted" in await audit_actions(world)
        async with runner.store.transaction() as tx:
            assert await tx.list_demandes() == []
        await runner.check_alive()


async def test_two_confirms_one_demande_and_drafts_survive_restart(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant, bot_id = world.aidant, world.bot_id
        dm = await botsupport.open_direct_chat(aidant, bot_id)
        await say(aidant, dm, filled_form())
        await next_reply(aidant, dm, bot_id, after=0)

        first_device = runner.app.gateway.device_id  # type: ignore[union-attr]
        await runner.restart()
        assert runner.app.gateway.device_id == first_device  # type: ignore[union-attr]

        await say(aidant, dm, "!confirmer")
        await say(aidant, dm, "!confirmer")
        first = await next_reply(aidant, dm, bot_id, after=1)
        second = await next_reply(aidant, dm, bot_id, after=2)
        assert "ouverte" in first
        assert "déjà ouverte" in second
        async with runner.store.transaction() as tx:
            demandes = await tx.list_demandes()
        assert len(demandes) == 1 and demandes[0].creation_step == "ready"

        devices = await synapse.admin_request(
            "GET",
            f"/_synapse/admin/v2/users/{bot_id}/devices",
            (await clients.user("admin2", admin=True)).access_token,
        )
        assert [d["device_id"] for d in devices.body["devices"]] == [first_device]
        await runner.check_alive()


async def test_invitations_to_foreign_rooms_are_declined(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        stranger = await clients.client("stranger")
        # A group room from a directory agent, and a direct chat from a stranger.
        group_room = await matrix.create_encrypted_room(world.aidant, [world.bot_id])
        resp = await stranger.room_create(is_direct=True, invite=[world.bot_id])
        assert isinstance(resp, nio.RoomCreateResponse)

        async def declined() -> bool:
            entries = []
            async with runner.store.transaction() as tx:
                entries = await tx.audit_entries(action="invitation_declined")
            return len(entries) >= 2

        await matrix.wait_for(declined, 30, "both invitations declined")
        members = await runner.app.gateway.members(group_room)  # type: ignore[union-attr]
        assert members.get(world.bot_id) == "leave"
        await runner.check_alive()
