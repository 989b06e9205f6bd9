"""One input never stops the service: the defects of issue 8, on the real homeserver.

Each test reproduces what a review found against the real bot: a file whose media cannot
be fetched, a directory entry on a homeserver that is not allowed, an intruder found at
send time. Each failed on the code before the fault-isolation work.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from nio.crypto.attachments import encrypt_attachment

from bot.devserver import LocalSynapse
from bot.domain import form as form_rules
from bot.domain.model import DemandeForm, Role
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, next_reply, reply_with, say
from tests.support.email import email_bot, relay
from tests.support.world import audit_actions, demande_of, make_world, open_demande

UNREACHABLE_MEDIA = "mxc://unreachable.invalid/AAAAAAAAAAAAAAAAAAAAAAAA"


async def test_a_file_whose_media_cannot_be_fetched_never_stops_the_bot(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """H1: the download fails with 502; before, the same sync batch was retried forever."""
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        dm, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(world.instr1, room_id, 1)

        _, keys = encrypt_attachment(b"x" * 100)
        resp = await world.instr1.room_send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.file",
                "body": "piece.pdf",
                "info": {"mimetype": "application/pdf", "size": 100},
                "file": {"url": UNREACHABLE_MEDIA, **keys},
            },
            ignore_unverified_devices=True,
        )
        assert hasattr(resp, "event_id"), resp

        # The same room, and another room, keep being served.
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, "!statut")
        await reply_with(world.instr1, room_id, world.bot_id, reference, after=n)
        n_dm = count_from(world.aidant, dm, world.bot_id)
        await say(world.aidant, dm, "!aide")
        await next_reply(world.aidant, dm, world.bot_id, after=n_dm)

        # A restart does not bring the poisoned batch back.
        await runner.restart()
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, "!statut")
        await reply_with(world.instr1, room_id, world.bot_id, reference, after=n)
        await runner.check_alive()


async def test_an_instructeur_on_a_homeserver_not_allowed_is_left_out_and_reported(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """H2: before, the demande was « ouverte » without a room, and the next start died."""
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        async with runner.store.transaction() as tx:
            await tx.upsert_agent(
                first_name="Gaston",
                last_name="Partenaire",
                email=None,
                matrix_id="@ghost:partenaire.example",
                group_id=world.directory.groups["caf"].id,
                roles=frozenset({Role.INSTRUCTEUR}),
            )
        dm = await botsupport.open_direct_chat(world.aidant, world.bot_id)
        await say(world.aidant, dm, filled_form())
        recap = await next_reply(world.aidant, dm, world.bot_id, after=0)
        assert "Gaston Partenaire" in recap and "partenaire.example" in recap
        await say(world.aidant, dm, "!confirmer")
        opened = await next_reply(world.aidant, dm, world.bot_id, after=1)
        reference = opened.split("Demande ", 1)[1].split(" ", 1)[0]
        demande = await demande_of(world, reference)
        assert demande.creation_step == "ready" and demande.room_id
        members = await runner.app.gateway.members(demande.room_id)  # type: ignore[union-attr]
        assert "@ghost:partenaire.example" not in members
        assert world.instr1.user_id in members
        assert "@ghost:partenaire.example" not in {
            p.matrix_id for p in await _participants(runner, demande.id)
        }

        # The bot starts again, and keeps serving.
        await runner.restart()
        await matrix.join_and_read(world.instr1, demande.room_id, 1)
        n = count_from(world.instr1, demande.room_id, world.bot_id)
        await say(world.instr1, demande.room_id, "!statut")
        await reply_with(world.instr1, demande.room_id, world.bot_id, reference, after=n)
        await runner.check_alive()


async def test_a_demande_that_cannot_be_opened_never_blocks_the_others_nor_the_start(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """H2, recovery: a demande recorded with a participant the room cannot take (data of
    an older version) is reported, and the next demande is opened all the same."""
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant = world.directory.agents["aidant"]
        await runner.stop()

        # Written straight into the database, as an older version of the bot did.
        store = await _store_of(runner)
        try:
            async with store.transaction() as tx:
                ghost, _ = await tx.upsert_agent(
                    first_name="Gaston",
                    last_name="Partenaire",
                    email=None,
                    matrix_id="@ghost:partenaire.example",
                    group_id=world.directory.groups["caf"].id,
                    roles=frozenset({Role.INSTRUCTEUR}),
                )
                draft = await tx.save_draft(
                    aidant_agent_id=aidant.id,
                    dm_room_id="!nowhere:localhost",
                    form=_form(),
                    group_ids=[world.directory.groups["caf"].id],
                    now=datetime.now(UTC),
                )
                stuck = await tx.create_demande(
                    reference="A-2026-900001",
                    form=_form(),
                    aidant_agent_id=aidant.id,
                    group_ids=[world.directory.groups["caf"].id],
                    draft_id=draft.id,
                    now=datetime.now(UTC),
                )
                await tx.add_participant(
                    demande_id=stuck.id,
                    agent=aidant,
                    kind="aidant",
                    added_by="t",
                    now=datetime.now(UTC),
                )
                await tx.add_participant(
                    demande_id=stuck.id, agent=ghost, kind="instructeur", added_by="t",
                    now=datetime.now(UTC),
                )  # fmt: skip
        finally:
            await store.close()

        await runner.start()  # before: ValueError out of App.run(), a crash loop
        _, reference = await open_demande(world)
        assert (await demande_of(world, reference)).creation_step == "ready"
        actions = await audit_actions(world, "A-2026-900001")
        assert "demande_opening_problem" in actions
        await runner.check_alive()


async def test_an_intruder_present_at_send_time_is_removed_and_the_reply_sent(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """Before: the outbox asked the room service for recipients while holding its lock;
    the room service kicked the intruder and flushed the outbox again: a deadlock."""
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(world.instr1, room_id, 1)
        await runner.stop()

        # While the bot is away: a command, then an intruder brought in by a server admin.
        # Both arrive in the same sync batch, the intruder already in the room's state
        # when the command's reply is sent.
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, "!statut")
        admin = await clients.user("admin", admin=True)
        intruder = await clients.client("intruder")
        resp = await synapse.admin_request(
            "POST",
            f"/_synapse/admin/v1/rooms/{room_id}/make_room_admin",
            admin.access_token,
            json={"user_id": intruder.user_id},
        )
        assert resp.ok, resp

        await runner.start()
        await reply_with(world.instr1, room_id, world.bot_id, reference, after=n)

        async def intruder_gone() -> bool:
            members = await runner.app.gateway.members(room_id)  # type: ignore[union-attr]
            return members.get(intruder.user_id) in ("leave", "ban", None)

        await matrix.wait_for(intruder_gone, 30, "the intruder removed")
        # Later messages still flow.
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, "!statut")
        await reply_with(world.instr1, room_id, world.bot_id, reference, after=n)
        await runner.check_alive()


async def _participants(runner: botsupport.BotRunner, demande_id: int) -> list[object]:
    async with runner.store.transaction() as tx:
        return list(await tx.participants(demande_id))


async def _store_of(runner: botsupport.BotRunner) -> Store:
    settings = runner.settings()
    cipher = FieldCipher.from_secret(settings.secrets.data_key.reveal())
    return await Store.open(settings.database.url.reveal(), cipher)


def _form() -> DemandeForm:
    result = form_rules.parse_form(
        filled_form(),
        today=date.today(),
        known_departements={"95"},
        organisation_lookup=lambda text: "caf",
        categories=(),
    )
    assert isinstance(result, DemandeForm), result
    return result
