"""One input never stops the service: the defects of issue 8, on the real homeserver.

Each test reproduces what a review found against the real bot: a file whose media cannot
be fetched, a directory entry on a homeserver that is not allowed, an intruder found at
send time. Each failed on the code before the fault-isolation work.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import nio
import pytest
from nio.crypto.attachments import encrypt_attachment

from bot import app as bot_app
from bot.devserver import LocalSynapse
from bot.domain import form as form_rules
from bot.domain.model import DemandeForm, Role, Status
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from bot.store.repository import Tx
from bridge.posting import InboxPoster
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, next_reply, reply_with, say
from tests.support.clock import FakeClock
from tests.support.email import bridged, email_bot, mailonly, relay, reply
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
    """H2, recovery: data written by an older version (a participant the room cannot take,
    a reference the room cannot be named after) is reported, and the bot starts and opens
    the next demande all the same."""
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        aidant = world.directory.agents["aidant"]
        caf = world.directory.groups["caf"].id
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
                    group_id=caf,
                    roles=frozenset({Role.INSTRUCTEUR}),
                )
                for reference in ("A-2026-900001", "A-2026-0900002"):
                    draft = await tx.save_draft(
                        aidant_agent_id=aidant.id,
                        dm_room_id="!nowhere:localhost",
                        form=_form(),
                        group_ids=[caf],
                        now=datetime.now(UTC),
                    )
                    stuck = await tx.create_demande(
                        reference=reference,
                        form=_form(),
                        aidant_agent_id=aidant.id,
                        group_ids=[caf],
                        draft_id=draft.id,
                        now=datetime.now(UTC),
                    )
                    for agent, kind in ((aidant, "aidant"), (ghost, "instructeur")):
                        await tx.add_participant(
                            demande_id=stuck.id,
                            agent=agent,
                            kind=kind,
                            added_by="t",
                            now=datetime.now(UTC),
                        )
        finally:
            await store.close()

        await runner.start()  # before: ValueError out of App.run(), a crash loop
        # The first one gets its room, without the account it cannot take.
        ghosted = await demande_of(world, "A-2026-900001")
        assert ghosted.creation_step == "ready" and ghosted.room_id
        members = await runner.app.gateway.members(ghosted.room_id)  # type: ignore[union-attr]
        assert "@ghost:partenaire.example" not in members
        assert "invite_impossible" in await audit_actions(world, "A-2026-900001")
        # The second cannot be built: recorded once, the operators told, the rest goes on.
        assert "demande_opening_problem" in await audit_actions(world, "A-2026-0900002")
        _, reference = await open_demande(world)
        assert (await demande_of(world, reference)).creation_step == "ready"

        async def operators_told() -> bool:
            async with runner.store.transaction() as tx:
                queued = await tx.pending_messages(runner.app.admin.room.room_id)  # type: ignore[union-attr]
                sent = await tx.message_event_id("alert-opening-problem-A-2026-0900002")
            return sent is not None or any("alert-opening" in m.txn_id for m in queued)

        await matrix.wait_for(operators_told, 30, "the operators told")
        await runner.restart()
        assert (await audit_actions(world, "A-2026-0900002")).count("demande_opening_problem") == 1
        await runner.check_alive()


async def test_a_room_the_homeserver_refuses_is_retried_then_reported_never_ouverte(
    synapse: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect 2 follow-up: Synapse refuses the createRoom (400, a room version it does not
    support). Before, the aidant was told « ouverte » at once, with no room ever coming,
    and every recovery pass waited 10 s for an orphan room before asking again."""
    # The test runs the recovery passes itself, moving the clock past each delay.
    monkeypatch.setattr(bot_app, "RECOVERY_EVERY_SECONDS", 24 * 3600.0)
    clock = FakeClock(None)
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        runner.clock = clock
        await runner.start()  # the admin room, made with the usual room version
        world = await make_world(clients, runner)
        await runner.stop()
        runner.bot_settings = {"room_version": "aplus-refused"}
        await runner.start()

        dm = await botsupport.open_direct_chat(world.aidant, world.bot_id)
        await say(world.aidant, dm, filled_form())
        assert "!confirmer" in await next_reply(world.aidant, dm, world.bot_id, after=0)
        await say(world.aidant, dm, "!confirmer")
        recorded = await next_reply(world.aidant, dm, world.bot_id, after=1)
        assert "ouverte" not in recorded, recorded
        assert "enregistrée" in recorded and "en cours de création" in recorded, recorded
        reference = recorded.split("Demande ", 1)[1].split(" ", 1)[0]

        opening = runner.app.parts.opening  # type: ignore[union-attr]
        for _ in range(3):  # attempts 2, 3 and 4, each past its delay
            clock.offset += timedelta(minutes=5)
            await opening.resume_all()
        given_up = await next_reply(world.aidant, dm, world.bot_id, after=2)
        assert reference in given_up and "n'a pas pu être créé" in given_up, given_up
        assert "rien à renvoyer" in given_up
        demande = await demande_of(world, reference)
        assert demande.creation_step == "pending" and demande.room_id is None
        actions = await audit_actions(world, reference)
        assert actions.count("demande_opening_problem") == 1
        assert actions.count("demande_opening_given_up") == 1
        admin_room = runner.app.admin.room.room_id  # type: ignore[union-attr]

        async def operators_told() -> bool:
            async with runner.store.transaction() as tx:
                sent = await tx.message_event_id(f"alert-opening-problem-{reference}")
                queued = await tx.pending_messages(admin_room)
            return sent is not None or any(reference in m.txn_id for m in queued)

        await matrix.wait_for(operators_told, 30, "the operators told")

        # The operators fix the configuration and restart: the hourly attempt makes the room.
        await runner.stop()
        runner.bot_settings = {}
        clock.offset += timedelta(hours=2)
        await runner.start()
        opened = await next_reply(world.aidant, dm, world.bot_id, after=3)
        assert reference in opened and "ouverte" in opened, opened
        demande = await demande_of(world, reference)
        assert demande.creation_step == "ready" and demande.room_id
        await matrix.join_and_read(world.instr1, demande.room_id, 1)
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


async def test_a_command_that_fails_half_way_leaves_nothing_of_its_work(
    synapse: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect 4: the framework swallowed the exception inside the event's transaction, so
    `!inviter` kept its ledger rows (the invited agent was authorised) and was never retried."""
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        await matrix.join_and_read(world.instr1, demande.room_id, 1)
        instr3 = await clients.client("instr3")
        await botsupport.add_agent(
            runner.store, world.directory, "instr3", matrix_id=instr3.user_id,
            roles=[Role.INSTRUCTEUR], group="cpam",
        )  # fmt: skip

        real_audit = Tx.audit

        async def failing_audit(self: Tx, action: str, **kw: Any) -> None:
            if action == "participant_added":  # after the ledger row is written
                raise RuntimeError("injected failure in the middle of !inviter")
            await real_audit(self, action, **kw)

        monkeypatch.setattr(Tx, "audit", failing_audit)
        n = count_from(world.instr1, demande.room_id, world.bot_id)
        await say(world.instr1, demande.room_id, f"!inviter {world.directory.groups['cpam'].name}")
        failed = await reply_with(
            world.instr1, demande.room_id, world.bot_id, "erreur inattendue", after=n
        )
        participants = {p.matrix_id for p in await _participants(runner, demande.id)}
        assert instr3.user_id not in participants  # before: the ledger row stayed
        members = await runner.app.gateway.members(demande.room_id)  # type: ignore[union-attr]
        assert instr3.user_id not in members
        assert "n'a pas été exécutée" in failed
        assert "command_failed" in await audit_actions(world, reference)

        # Once the fault is gone the same command works.
        monkeypatch.setattr(Tx, "audit", real_audit)
        n = count_from(world.instr1, demande.room_id, world.bot_id)
        await say(world.instr1, demande.room_id, f"!inviter {world.directory.groups['cpam'].name}")
        await reply_with(world.instr1, demande.room_id, world.bot_id, "Invité", after=n)
        assert instr3.user_id in {p.matrix_id for p in await _participants(runner, demande.id)}
        await runner.check_alive()


async def test_an_email_only_responsable_gets_the_late_list_by_email(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """Defect 5: the email hook of the reminders was never wired: nothing was sent."""
    clock = FakeClock(datetime(2026, 4, 2, 10, tzinfo=UTC))  # a Thursday
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        runner.clock = clock
        await runner.start()
        world = await make_world(clients, runner)
        chef = f"{matrix.unique('chef')}@caf95.example.test"
        await botsupport.add_agent(
            runner.store, world.directory, "chef", matrix_id=None, email=chef,
            roles=[Role.RESPONSABLE], group="caf", first_name="Chantal",
        )  # fmt: skip
        _, reference = await open_demande(world, filled_form(date_mandat="01/03/2026"))
        clock.at = datetime(2026, 4, 9, 10, tzinfo=UTC)  # 4 business days, no answer
        report = await runner.app.admin.followup.remind(actor="test")  # type: ignore[union-attr]
        assert report.responsables_told == 1
        await sink.wait_for(lambda: sink.to(chef), what="the late list to the responsable")
        [mail] = sink.to(chef)
        assert reference in mail.text and "retard" in mail.text
        assert "Dupontel" not in mail.text and "Dupontel" not in mail.header("Subject")
        assert mail.header("Reply-To") == ""  # nothing to answer to
        await runner.check_alive()


async def test_a_profile_change_of_a_late_joiner_never_reposts_the_dossier(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """Defect 6: each display-name change (join → join) re-posted the usager's data."""
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        await matrix.join_and_read(world.instr1, demande.room_id, 1)
        instr3 = await clients.client("instr3")
        await botsupport.add_agent(
            runner.store, world.directory, "instr3", matrix_id=instr3.user_id,
            roles=[Role.INSTRUCTEUR], group="cpam",
        )  # fmt: skip
        n = count_from(world.instr1, demande.room_id, world.bot_id)
        await say(world.instr1, demande.room_id, f"!inviter {world.directory.groups['cpam'].name}")
        await reply_with(world.instr1, demande.room_id, world.bot_id, "Invité", after=n)
        await matrix.join_and_find(instr3, demande.room_id, "Dupontel")
        for name in ("Ines", "Ines T.", "Ines Test"):
            resp = await instr3.set_displayname(name)
            assert isinstance(resp, nio.ProfileSetDisplayNameResponse), resp
        # A later message proves the bot handled the three changes before it.
        n = count_from(instr3, demande.room_id, world.bot_id)
        await say(instr3, demande.room_id, "!statut")
        await reply_with(instr3, demande.room_id, world.bot_id, reference, after=n)
        dossiers = [t for t in matrix.texts(instr3, demande.room_id) if "Dupontel" in t]
        assert len(dossiers) == 1, len(dossiers)
        await runner.check_alive()


async def test_protected_state_changed_while_the_bot_was_away_is_reverted(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """Defect 7: a change hidden in a limited sync (more than 100 events after it) was
    never looked at; the bot now checks every open room's protected state at start."""
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(world.instr1, room_id, 1)
        await runner.stop()

        admin = await clients.user("admin", admin=True)
        insider = await clients.client("insider")
        resp = await synapse.admin_request(
            "POST",
            f"/_synapse/admin/v1/rooms/{room_id}/make_room_admin",
            admin.access_token,
            json={"user_id": insider.user_id},
        )
        assert resp.ok, resp
        await matrix.accept_invite(insider, room_id)
        for etype, content in (
            ("m.room.join_rules", {"join_rule": "public"}),
            ("m.room.history_visibility", {"history_visibility": "world_readable"}),
        ):
            put = await insider.room_put_state(room_id, etype, content)
            assert isinstance(put, nio.RoomPutStateResponse), put
        # More than a sync's timeline: the changes end up in the `state` block.
        for i in range(110):
            sent = await synapse.admin_request(
                "PUT",
                f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/pad{i}",
                insider.access_token,
                json={"msgtype": "m.notice", "body": "."},
            )
            assert sent.ok, sent

        await runner.start()

        async def restored() -> bool:
            gw = runner.app.gateway  # type: ignore[union-attr]
            joins = await gw.state_event(room_id, "m.room.join_rules")
            history = await gw.state_event(room_id, "m.room.history_visibility")
            members = await gw.members(room_id)
            return (
                (joins or {}).get("join_rule") == "invite"
                and (history or {}).get("history_visibility") == "invited"
                and members.get(insider.user_id) in ("leave", "ban", None)
            )

        await matrix.wait_for(restored, 60, "the protected state restored")
        assert "state_reverted" in await audit_actions(world, reference)
        await runner.check_alive()


async def test_a_reply_accepted_before_its_agent_was_deactivated_is_not_posted(
    synapse: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect 8: the reply (and its quick answer) was posted in the name of an agent who
    had left; it is now dropped, audited, and the room told."""
    gate = asyncio.Event()
    real_flush = InboxPoster.flush

    async def gated_flush(self: InboxPoster) -> int:
        await gate.wait()
        return await real_flush(self)

    monkeypatch.setattr(InboxPoster, "flush", gated_flush)
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
        code, _ = await reply(runner, sink.to(sophie)[0], sophie, "!traitee\nC'est réglé.")
        assert code == 250
        agent = world.directory.agents["mailonly"]
        await runner.app.admin.directory.deactivate(agent.id, actor="test")  # type: ignore[union-attr]
        gate.set()
        await matrix.join_and_read(world.instr1, demande.room_id, 1)

        async def reply_handled() -> bool:
            async with runner.store.transaction() as tx:
                return not await tx.pending_inbound()

        await matrix.wait_for(reply_handled, 30, "the reply handled")
        assert (await demande_of(world, reference)).status != Status.TRAITEE
        await reply_with(world.instr1, demande.room_id, world.bot_id, "n'a pas été publiée")
        actions = await audit_actions(world, reference)
        assert "email_reply_dropped" in actions and "status_traitee" not in actions
        assert not bridged(world.instr1, demande.room_id, world.bot_id)
        await runner.check_alive()
