"""Email-only agents and shared mailboxes take full part (issue 11), end to end.

A real Synapse, the real bot with its listener, the relay sink; every email is read as
the `.eml` a mail client would show (`tests.support.email.as_eml`): one thread per
demande, a subject without personal data, a text part without links, an HTML part with
the link to the demande's room.
"""

from __future__ import annotations

import asyncio
import html
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nio

from bot.devserver import LocalSynapse
from bot.domain.calendar import PARIS
from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, next_reply, reply_with, say
from tests.support.clock import FakeClock
from tests.support.email import Eml, as_eml, email_bot, mailonly, relay, reply
from tests.support.smtp import Received, RelaySink
from tests.support.world import World, audit_actions, demande_of, make_world, open_demande


async def _next(sink: RelaySink, address: str, label: str) -> Received:
    """The first email to `address` whose subject ends with `label`."""

    def found() -> list[Received]:
        return [m for m in sink.to(address) if m.header("Subject").endswith(f"— {label}")]

    await sink.wait_for(lambda: bool(found()), what=f"« {label} » to {address}")
    return found()[0]


async def test_colleagues_actions_reach_the_email_only_instructeur_and_the_shared_mailbox(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        bal = f"{matrix.unique('bal')}@caf95.example.test"
        caf = world.directory.groups["caf"]
        async with runner.store.transaction() as tx:
            await tx.upsert_group(
                name=caf.name, organisation_id="caf", departements=frozenset({"95"}), bal=bal
            )
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        for client in (world.aidant, world.instr1):
            await matrix.join_and_read(client, room_id, 1)

        # The dossier lists the participants and links to the room (HTML part only).
        dossier_mail = await _next(sink, sophie, "nouvelle demande")
        root = dossier_mail.header("Message-ID")
        dossier = as_eml(dossier_mail, reference, room_id=room_id, root=root)
        assert "Participants :" in dossier.text and "Instr1 Test" in dossier.text
        assert "Sophie Test" in dossier.text and "par courriel" in dossier.text
        assert "Dupontel" in dossier.text and dossier.reply_to.startswith("reply+")
        # The shared mailbox is not told to reply: it has no reply address.
        shared = as_eml(
            await _next(sink, bal, "nouvelle demande"), reference, room_id=room_id, root=root
        )
        assert shared.reply_to == "" and "répondre directement" not in shared.text
        assert "on ne peut pas y répondre" in shared.text and "!jemenoccupe" in shared.text

        # A colleague takes the demande: she and the shared mailbox learn it, in the thread.
        await say(world.instr1, room_id, "!jemenoccupe")
        taken = as_eml(
            await _next(sink, sophie, "prise en charge"), reference, room_id=room_id, root=root
        )
        assert "Instr1 Test s'occupe de la demande" in taken.text
        assert taken.reply_to.startswith("reply+")  # she may answer it
        told = as_eml(
            await _next(sink, bal, "prise en charge"), reference, room_id=room_id, root=root
        )
        assert "Instr1 Test s'occupe de la demande" in told.text and told.reply_to == ""

        await say(world.instr1, room_id, "!pasleboninterlocuteur")
        wrong = await _next(sink, sophie, "pas le bon interlocuteur")
        assert (
            "ne pas être le bon interlocuteur"
            in as_eml(wrong, reference, room_id=room_id, root=root).text
        )

        # Another group is invited: she learns who came.
        cpam = world.directory.groups["cpam"]
        paul = await botsupport.add_agent(
            runner.store, world.directory, "paul", matrix_id=None,
            email=f"{matrix.unique('paul')}@cpam95.example.test",
            roles=[Role.INSTRUCTEUR], group="cpam",
        )  # fmt: skip
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, f"!inviter {cpam.name}")
        await reply_with(world.instr1, room_id, world.bot_id, "Invité", after=n)
        invited = as_eml(
            await _next(sink, sophie, "participant invité"), reference, room_id=room_id, root=root
        )
        assert "Instr1 Test (" in invited.text and "a invité" in invited.text
        assert "Paul Test" in invited.text
        assert paul.email is not None
        paul_dossier = as_eml(
            await _next(sink, paul.email, "nouvelle demande"), reference, room_id=room_id, root=root
        )
        assert "Sophie Test" in paul_dossier.text and "Paul Test" in paul_dossier.text

        await say(world.instr1, room_id, "!traitee")
        treated = await _next(sink, sophie, "demande traitée")
        assert "a traité la demande" in as_eml(treated, reference, room_id=room_id, root=root).text
        await _next(sink, bal, "demande traitée")

        await say(world.aidant, room_id, "!clore utile")
        closed = await _next(sink, sophie, "demande clôturée")
        assert (
            "clôturée par Aidant Test" in as_eml(closed, reference, room_id=room_id, root=root).text
        )
        await say(world.aidant, room_id, "!rouvrir")
        reopened = await _next(sink, sophie, "demande rouverte")
        assert "rouverte" in as_eml(reopened, reference, room_id=room_id, root=root).text

        # A participant removed (account deactivated): she is told.
        assert runner.app is not None and runner.app.admin is not None
        await runner.app.admin.directory.deactivate(paul.id, actor="test")
        removed = await _next(sink, sophie, "participant retiré")
        gone = as_eml(removed, reference, room_id=room_id, root=root)
        assert "Paul Test (" in gone.text and "ne participe plus" in gone.text

        # Each once; the shared mailbox got the dossier and the two answers, nothing else.
        subjects = [m.header("Subject") for m in sink.to(sophie)]
        assert len(subjects) == len(set(subjects)), subjects
        assert len(sink.to(bal)) == 3
        assert "command_jemenoccupe" in await audit_actions(world, reference)
        await runner.check_alive()


async def _audit(world: World, reference: str, action: str) -> list[dict[str, object]]:
    async with world.runner.store.transaction() as tx:
        return [
            e.details for e in await tx.audit_entries(reference=reference) if e.action == action
        ]


async def test_an_email_only_instructeur_acts_by_email_with_the_rooms_commands(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        cpam_client = await clients.client("cpam1")
        await botsupport.add_agent(
            runner.store, world.directory, "cpam1", matrix_id=cpam_client.user_id,
            roles=[Role.INSTRUCTEUR], group="cpam",
        )  # fmt: skip
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(world.instr1, room_id, 1)
        dossier = await _next(sink, sophie, "nouvelle demande")
        root = dossier.header("Message-ID")

        def eml(received: Received) -> Eml:
            return as_eml(received, reference, room_id=room_id, root=root)

        # !statut: answered by email, in the thread, to her only.
        code, _ = await reply(runner, dossier, sophie, "!statut")
        assert code == 250
        status = eml(await _next(sink, sophie, "réponse à votre commande"))
        assert "Réponse à votre commande !statut" in status.text
        assert f"Demande {reference} : " in status.text and "Participants :" in status.text

        # !inviter « CPAM 95 » (the room's matching: organisation and département): its
        # Matrix agent is invited into the room; she gets the answer.
        await reply(runner, dossier, sophie, "!inviter CPAM 95")
        await matrix.accept_invite(cpam_client, room_id, 30)  # invited by the bot: joins
        assert room_id in cpam_client.rooms
        answers = await _answers(sink, sophie, 2)
        assert "Invité(s) : Cpam1 Test" in eml(answers[1]).text

        # An unknown command: a French answer listing those she may write.
        await reply(runner, dossier, sophie, "!bonjour")
        unknown = eml((await _answers(sink, sophie, 3))[2])
        assert "Commande inconnue : !bonjour" in unknown.text
        for name in ("!statut", "!inviter", "!notifications", "!jemenoccupe", "!courriels"):
            assert name in unknown.text.split("Commandes possibles par courriel :")[1]

        # !notifications non: the next messages of this demande no longer reach her...
        await reply(runner, dossier, sophie, "!notifications non")
        assert "ne recevra plus les courriels" in eml((await _answers(sink, sophie, 4))[3]).text
        before = len(sink.to(sophie))
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, "Premier message après l'arrêt.")
        await say(world.instr1, room_id, "!jemenoccupe")
        await reply_with(world.instr1, room_id, world.bot_id, "s'occupe de la demande", after=n)
        # ...and once resumed, they do (the first message she gets is the one after).
        await reply(runner, dossier, sophie, "!notifications oui")
        await _answers(sink, sophie, 5)
        await say(world.instr1, room_id, "Deuxième message, après la reprise.")
        resumed = await _next(sink, sophie, "nouveau message")
        assert "Deuxième message" in resumed.text
        texts = [m.text for m in sink.to(sophie)[before:]]
        assert not any("Premier message" in t or "s'occupe" in t for t in texts), texts

        # !completer is the aidant's: by email too, an instructeur is told so, nothing changes.
        await reply(runner, dossier, sophie, "!completer nom : Martin")
        refused = eml((await _answers(sink, sophie, 6))[5])
        assert "Seul l'aidant" in refused.text and "Martin" not in refused.text
        async with runner.store.transaction() as tx:
            assert (await tx.load_form((await demande_of(world, reference)).id)).usager.nom != (
                "Martin"
            )

        # Each email command is audited like its Matrix twin, marked as sent by email.
        for action in ("command_statut", "command_inviter", "command_notifications"):
            details = await _audit(world, reference, action)
            assert details and all(d["via"] == "email" for d in details), (action, details)
        assert await _audit(world, reference, "command_refused")
        await runner.check_alive()


async def _answers(sink: RelaySink, address: str, count: int) -> list[Received]:
    def found() -> list[Received]:
        return [
            m
            for m in sink.to(address)
            if m.header("Subject").endswith("— réponse à votre commande")
        ]

    await sink.wait_for(lambda: len(found()) >= count, what=f"{count} answers to {address}")
    return found()


# Tomorrow and the day after (the form's mandate is dated today: never in the future).
_TOMORROW = datetime.now(PARIS).date() + timedelta(days=1)


def _paris(day: int, hour: int, minute: int = 0) -> datetime:
    """`day` 2: tomorrow, 3: the day after; at `hour`:`minute` Paris time."""
    d = _TOMORROW + timedelta(days=day - 2)
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=PARIS)


async def _held(runner: botsupport.BotRunner) -> int:
    async with runner.store.transaction() as tx:
        return len(await tx.pending_digest_items())


async def test_the_daily_digest_sends_one_email_a_day_per_demande_with_its_messages(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    clock = FakeClock(_paris(2, 9))
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        runner.clock = clock
        await runner.start()
        assert runner.app is not None and runner.app.email is not None
        digests = runner.app.email.digests
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(world.instr1, room_id, 1)
        dossier = await _next(sink, sophie, "nouvelle demande")
        root = dossier.header("Message-ID")

        await reply(runner, dossier, sophie, "!courriels quotidien 17h")
        chosen = as_eml((await _answers(sink, sophie, 1))[0], reference, room_id=room_id, root=root)
        assert "chaque jour à 17 h un résumé" in chosen.text

        # The day's messages and actions are held, not sent.
        for text in ("Message un.", "Message deux.", "Message trois."):
            await say(world.instr1, room_id, text)
        await say(world.instr1, room_id, "!jemenoccupe")
        await _until(lambda: _held(runner), 4)
        # A message withdrawn before the digest never goes out.
        withdrawn = await say(world.instr1, room_id, "Message à retirer.")
        await _until(lambda: _held(runner), 5)
        redacted = await world.instr1.room_redact(room_id, withdrawn, reason="erreur")
        assert isinstance(redacted, nio.RoomRedactResponse), redacted
        for _ in range(300):
            if await _held(runner) == 4:
                break
            await asyncio.sleep(0.1)
        assert await _held(runner) == 4
        count = len(sink.to(sophie))
        assert await digests.send_due() == 0  # 9 h: not yet

        # At 17 h, one email for the demande with the four.
        clock.at = _paris(2, 17, 5)
        assert await digests.send_due() == 1
        await sink.wait_for(lambda: len(sink.to(sophie)) > count, what="the digest")
        [digest_mail] = sink.to(sophie)[count:]
        digest = as_eml(digest_mail, reference, room_id=room_id, root=root)
        assert digest.subject.endswith("— résumé du jour") and "4 message(s)" in digest.text
        for text in ("Message un.", "Message deux.", "Message trois.", "s'occupe de la demande"):
            assert text in digest.text and html.escape(text) in digest.html
        assert "retirer" not in digest.text
        assert digest.reply_to.startswith("reply+")  # she may answer it like any other

        # What comes after 17 h waits for the next day; a second pass sends nothing.
        await say(world.instr1, room_id, "Message du soir.")
        await _until(lambda: _held(runner), 1)
        clock.at = _paris(2, 21)
        assert await digests.send_due() == 0
        clock.at = _paris(3, 17)
        assert await digests.send_due() == 1
        await sink.wait_for(lambda: len(sink.to(sophie)) > count + 1, what="the next digest")
        evening = as_eml(sink.to(sophie)[-1], reference, room_id=room_id, root=root)
        assert "1 message(s)" in evening.text and "Message du soir." in evening.text

        # A new demande's dossier still comes at once; back to « immediat », so do messages.
        _, second = await open_demande(world)
        await _next_for(sink, sophie, second, "nouvelle demande")
        await reply(runner, dossier, sophie, "!courriels immediat")
        await _answers(sink, sophie, 2)
        await say(world.instr1, room_id, "Message immédiat.")
        now = await _next(sink, sophie, "nouveau message")
        assert "Message immédiat." in now.text
        assert await _held(runner) == 0
        await runner.check_alive()


async def _until(count: Any, expected: int) -> None:
    for _ in range(300):
        if await count() >= expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still {await count()}, {expected} expected")


async def _next_for(sink: RelaySink, address: str, reference: str, label: str) -> Received:
    def found() -> list[Received]:
        return [
            m
            for m in sink.to(address)
            if m.header("Subject").startswith(f"[A+] Demande {reference}")
            and m.header("Subject").endswith(f"— {label}")
        ]

    await sink.wait_for(lambda: bool(found()), what=f"« {label} » of {reference}")
    return found()[0]


async def test_matrix_agents_with_email_notices_are_told_of_a_new_demande_and_an_invitation(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        instr2_email = f"{matrix.unique('instr2')}@caf95.example.test"
        cpam_client = await clients.client("cpam1")
        cpam_email = f"{matrix.unique('cpam1')}@cpam95.example.test"
        for key, client, email, group in (
            ("instr2", world.instr2, instr2_email, "caf"),
            ("cpam1", cpam_client, cpam_email, "cpam"),
        ):
            agent = await botsupport.add_agent(
                runner.store, world.directory, key, matrix_id=client.user_id, email=email,
                roles=[Role.INSTRUCTEUR], group=group,
            )  # fmt: skip
            async with runner.store.transaction() as tx:
                await tx.set_email_notifications(agent.id, True, datetime.now(PARIS))

        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        new = await _next(sink, instr2_email, "nouvelle demande")
        root = new.header("Message-ID")
        notice = as_eml(new, reference, room_id=room_id, root=root)
        assert "Une nouvelle demande attend votre groupe" in notice.text
        assert "Element" in notice.text and notice.reply_to == ""
        for word in ("Dupontel", "Jeanne", "Blocage", "suspendu"):  # no content at all
            assert word not in new.data.decode("utf-8", "replace"), word
        assert sink.to(cpam_email) == []  # not in the demande yet

        await matrix.join_and_read(world.instr1, room_id, 1)
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, f"!inviter {world.directory.groups['cpam'].name}")
        await reply_with(world.instr1, room_id, world.bot_id, "Invité", after=n)
        invited_mail = await _next(sink, cpam_email, "invitation")
        invited = as_eml(invited_mail, reference, room_id=room_id, root=root)
        assert "Vous avez été invité dans une demande" in invited.text
        assert "Dupontel" not in invited_mail.data.decode("utf-8", "replace")
        assert len(sink.to(cpam_email)) == 1 and len(sink.to(instr2_email)) == 1
        await runner.check_alive()


async def test_reminders_and_digests_reach_email_only_responsables_and_aidants(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    clock = FakeClock(datetime(2026, 4, 2, 10, tzinfo=UTC))  # a Thursday
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        runner.clock = clock
        await runner.start()
        assert runner.app is not None and runner.app.admin is not None
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        chef = f"{matrix.unique('chef')}@caf95.example.test"
        await botsupport.add_agent(
            runner.store, world.directory, "chef", matrix_id=None, email=chef,
            roles=[Role.RESPONSABLE], group="caf", first_name="Chantal",
        )  # fmt: skip
        async with runner.store.transaction() as tx:  # Sophie reads a digest, at 17 h
            await tx.set_email_digest(world.directory.agents["mailonly"].id, 17, clock.now())
        _, reference = await open_demande(world, filled_form(date_mandat="01/03/2026"))
        room_id = (await demande_of(world, reference)).room_id
        dossier = await _next(sink, sophie, "nouvelle demande")
        root = dossier.header("Message-ID")

        # Late: the responsable gets the list; Sophie the reminder at once (never held).
        clock.at = datetime(2026, 4, 9, 10, tzinfo=UTC)
        report = await runner.app.admin.followup.remind(actor="test")
        assert report.responsables_told == 1 and report.emails == 1
        await sink.wait_for(lambda: sink.to(chef), what="the late list")
        [late] = sink.to(chef)
        assert reference in late.text and "retard" in late.text
        assert late.message.get_body(preferencelist=("html",)) is not None  # type: ignore[attr-defined]
        assert "Dupontel" not in late.data.decode("utf-8", "replace")
        reminder = as_eml(
            await _next(sink, sophie, "relance"), reference, room_id=room_id, root=root
        )
        assert (
            "Relance" in reminder.text
            and "a écrit" not in reminder.text
            and await _held(runner) == 0
        )

        # She answers by email; ten days on, the aidant (now email-only) gets the digest.
        code, answer = await reply(
            runner, dossier, sophie, "Le versement reprend le mois prochain."
        )
        assert code == 250, answer
        await matrix.join_and_read(world.aidant, room_id, 1)
        aidant_email = f"{matrix.unique('aidant')}@fs95.example.test"
        async with runner.store.transaction() as tx:
            aidant = await tx.get_agent(world.directory.agents["aidant"].id)
            assert aidant is not None
            await tx.update_agent(replace(aidant, matrix_id=None, email=aidant_email))
        await _until(lambda: _answered(runner, reference), 1)
        clock.at = datetime(2026, 4, 21, 10, tzinfo=UTC)
        assert await runner.app.admin.followup.send_digest(actor="test") == 1
        await sink.wait_for(lambda: sink.to(aidant_email), what="the aidant's digest")
        [closable] = sink.to(aidant_email)
        assert reference in closable.text and "clore" in closable.text
        assert closable.message.get_body(preferencelist=("html",)) is not None  # type: ignore[attr-defined]
        assert "Dupontel" not in closable.data.decode("utf-8", "replace")
        await runner.check_alive()


async def _answered(runner: botsupport.BotRunner, reference: str) -> int:
    async with runner.store.transaction() as tx:
        d = await tx.get_demande_by_reference(reference)
    return 1 if d is not None and d.times.last_answer_at is not None else 0


async def test_minimisation_per_organisation_and_the_recap_says_who_gets_the_dossier_by_email(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)  # CAF: identifiers in full (policies/organisations.toml)
        paul = f"{matrix.unique('paul')}@cpam95.example.test"  # CPAM: withheld
        await botsupport.add_agent(
            runner.store, world.directory, "paul", matrix_id=None, email=paul,
            roles=[Role.INSTRUCTEUR], group="cpam",
        )  # fmt: skip
        bal = f"{matrix.unique('bal')}@cpam95.example.test"
        cpam = world.directory.groups["cpam"]
        async with runner.store.transaction() as tx:
            await tx.upsert_group(
                name=cpam.name, organisation_id="cpam", departements=frozenset({"95"}), bal=bal
            )
        form = filled_form(organismes="CAF, CPAM", nir="2 61 03 95 123 456 45").replace(
            "mandat :",
            "adresse : 12 rue des Lilas, 95000 Cergy\ntéléphone : 0612345678\nmandat :",
            1,
        )
        dm = await botsupport.open_direct_chat(world.aidant, world.bot_id)
        n = count_from(world.aidant, dm, world.bot_id)
        await say(world.aidant, dm, form)
        recap = await next_reply(world.aidant, dm, world.bot_id, after=n)
        assert "DOSSIER ENVOYÉ PAR COURRIEL À" in recap, recap
        caf = world.directory.groups["caf"]
        assert f"Sophie Test ({caf.name}) : dossier complet" in recap
        assert f"Paul Test ({cpam.name}) : sans NIR, adresse ni téléphone" in recap
        assert f"la boîte partagée de {cpam.name} ({bal}) : sans NIR" in recap
        assert "l'effacement des données de la demande ne les atteint pas" in recap
        await say(world.aidant, dm, "!confirmer")
        opened = await next_reply(world.aidant, dm, world.bot_id, after=n + 1)
        reference = opened.split("Demande ", 1)[1].split(" ", 1)[0]
        room_id = (await demande_of(world, reference)).room_id

        full = await _next(sink, sophie, "nouvelle demande")
        root = full.header("Message-ID")
        complete = as_eml(full, reference, room_id=room_id, root=root)
        assert "NIR : 261039512345645" in complete.text and "rue des Lilas" in complete.text
        assert "Téléphone : " in complete.text
        for address, ask in ((paul, "en répondant à ce courriel"), (bal, "peut les demander")):
            mail = await _next(sink, address, "nouvelle demande")
            kept = as_eml(mail, reference, room_id=room_id, root=root)
            raw = mail.data.decode("utf-8", "replace")
            for value in ("261039512345645", "rue des Lilas", "NIR :", "Téléphone :", "Adresse :"):
                assert value not in kept.text and value not in kept.html and value not in raw
            assert "ne contient pas le NIR, l'adresse ni le téléphone" in kept.text
            assert ask in kept.text and "Dupontel" in kept.text
        await runner.check_alive()
