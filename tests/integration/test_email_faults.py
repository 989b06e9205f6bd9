"""The email bridge under faults: the bot killed between commit and post (a real process),
the database unavailable (451), and a corpus of hostile mail through the real listener."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import pytest

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from bot.matrix.content import APLUS_KEY
from tests.db_fixtures import PG_ADMIN_DSN
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import count_from, reply_with
from tests.support.email import (
    bridged,
    dossier_by_email,
    email_bot,
    email_section,
    listener,
    mailonly,
    relay,
    reply,
    seed_email_only_instructeur,
)
from tests.support.smtp import build_reply, reply_to, send_mail
from tests.support.world import demande_of, make_world, open_demande

KILLED_BY_CRASH_POINT = 137
CORPUS = Path(__file__).resolve().parents[1] / "unit" / "corpus"


async def test_bot_killed_between_commit_and_post_posts_once_after_restart(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    files = await proc.register_bot(synapse, tmp_path / "bot")
    listen_port = proc.free_port()
    aidant = await clients.client("aidant")
    instr = await clients.client("instr")
    sophie = await seed_email_only_instructeur(files, aidant, instr)

    async with relay() as sink:
        with files.config.open("a") as config:
            config.write(email_section(sink.port, listen_port))
        first = proc.bot_process(files, env={"APLUS_CRASH_AT": "inbox_committed"})
        second = proc.bot_process(files)
        with proc.killed_at_exit(first, second):
            first.start()
            dossier, room_id = await dossier_by_email(files, aidant, instr, sink, sophie)

            # The reply is committed, then the bot dies before answering 250.
            message = build_reply(dossier, sender=sophie, text="Je traite le dossier demain.")
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await send_mail(
                    "127.0.0.1", listen_port, message, rcpt=reply_to(dossier), mail_from=sophie
                )
            assert await first.wait_exit() == KILLED_BY_CRASH_POINT, first.describe()
            async with files.store() as store, store.transaction() as tx:
                [kept] = await tx.inbound_entries()
            assert kept.state == "pending" and kept.event_id is None

            # Restarted: posted once. The sending MTA, which saw no 250, delivers again.
            second.start()
            await second.wait_log(r"email listener", 60)
            n = count_from(instr, room_id, files.user_id)
            await reply_with(instr, room_id, files.user_id, "Je traite le dossier", after=n)
            code, _ = await send_mail(
                "127.0.0.1", listen_port, message, rcpt=reply_to(dossier), mail_from=sophie
            )
            assert code == 250
            later = build_reply(dossier, sender=sophie, text="Et voici la suite.")
            code, _ = await send_mail(
                "127.0.0.1", listen_port, later, rcpt=reply_to(dossier), mail_from=sophie
            )
            assert code == 250
            await reply_with(instr, room_id, files.user_id, "la suite", after=n)

            async def events_recorded() -> bool:
                async with files.store() as store, store.transaction() as tx:
                    entries = await tx.inbound_entries()
                return len(entries) == 2 and all(e.event_id for e in entries)

            # The member may read the event a moment before the bot records its ID.
            await matrix.wait_for(events_recorded, 30, "the posted events recorded")
            assert await second.stop() == 0, second.describe()

    posted = [e.body for e in bridged(instr, room_id, files.user_id)]
    assert len(posted) == 2 and "Je traite le dossier demain." in posted[0], posted
    async with files.store() as store, store.transaction() as tx:
        entries = await tx.inbound_entries()
    assert [e.state for e in entries] == ["posted", "posted"]
    assert all(e.event_id for e in entries)


@pytest.mark.postgres
async def test_database_unavailable_answers_451_and_recovers(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]

    async def database_down(down: bool) -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(
                f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {"false" if down else "true"}'
            )
            if down:  # and cut the bot's pooled connections
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    database,
                )
        finally:
            await admin.close()

    async with relay() as sink:
        runner = await botsupport.new_bot(synapse, tmp_path / "bot", database_url=postgres_url)
        runner.email = {"relay_port": sink.port}
        try:
            await runner.start()
            world = await make_world(clients, runner)
            sophie = mailonly(world)
            _, reference = await open_demande(world)
            room_id = (await demande_of(world, reference)).room_id
            await matrix.join_and_read(world.instr1, room_id, 1)
            await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
            [dossier] = sink.to(sophie)
            host, port = listener(runner)
            message = build_reply(dossier, sender=sophie, text="Réponse pendant la panne.")

            # Down before RCPT: 451 there.
            await database_down(True)
            try:
                code, text = await send_mail(
                    host, port, message, rcpt=reply_to(dossier), mail_from=sophie
                )
                assert (code, text) == (451, "4.3.0 Temporary failure, please try again later")

                # Down between RCPT and DATA: 451 to DATA, never 250.
                await database_down(False)
                client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
                await client.connect()
                await client.ehlo()
                await client.mail(sophie)
                await client.rcpt(reply_to(dossier))
                await database_down(True)
                with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                    await client.data(message.as_bytes())
                assert refused.value.code == 451
                client.close()
            finally:
                await database_down(False)

            # Back: the MTA's retry is accepted and posted, once.
            n = count_from(world.instr1, room_id, world.bot_id)
            code, _ = await send_mail(host, port, message, rcpt=reply_to(dossier), mail_from=sophie)
            assert code == 250
            await reply_with(world.instr1, room_id, world.bot_id, "pendant la panne", after=n)
            assert len(bridged(world.instr1, room_id, world.bot_id)) == 1
            await runner.check_alive()
        finally:
            await runner.stop()


async def test_hostile_corpus_through_the_real_listener(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """Every corpus message, as our border MTA would hand it over (its
    Authentication-Results on top), to a live reply address of the corpus's sender."""
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        room_id = demande.room_id
        await matrix.join_and_read(world.instr1, room_id, 1)
        marie = "marie.durand@caf.fr"
        agent = await botsupport.add_agent(
            runner.store,
            world.directory,
            "marie",
            matrix_id=None,
            email=marie,
            roles=[Role.INSTRUCTEUR],
            group="caf",
            first_name="Marie",
        )
        assert runner.app is not None and runner.app.email is not None
        async with runner.store.transaction() as tx:
            await tx.add_participant(
                demande_id=demande.id, agent=agent, kind="invite", added_by="test", now=_now(runner)
            )
            token = await runner.app.email.bridge.reply_token(tx, demande.id, marie)
        rcpt = f"reply+{token}@reponse.aplus.test"
        host, port = listener(runner)

        answers: dict[str, int] = {}
        for path in sorted(CORPUS.glob("*.eml")):
            raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            stamp = b"Authentication-Results: aplus-dev; dmarc=pass header.from=caf.fr\r\n"
            answers[path.name], _ = await send_mail(
                host, port, stamp + raw, rcpt=rcpt, mail_from=marie
            )
        # A 150,000-character line breaks SMTP's own limit (RFC 5321 4.5.3.1.6): aiosmtpd
        # answers 500 while reading, before our handler; a real MTA would have encoded it.
        assert answers.pop("human-huge-line.eml") == 500
        assert set(answers.values()) <= {250, 550}, answers
        assert answers["human-multiple-from.eml"] == 550
        assert answers["human-header-injection-subject.eml"] == 550
        for name in ("bounce-dsn.eml", "auto_reply-outlook-oof.eml", "loop-our-marker.eml"):
            assert answers[name] == 250, name

        # What was posted is plain text, attributed, with nothing active in its HTML.
        n = count_from(world.instr1, room_id, world.bot_id)
        code, _ = await reply(runner, None, marie, "Fin du corpus.", to=rcpt)
        assert code == 250
        await reply_with(world.instr1, room_id, world.bot_id, "Fin du corpus", after=n, wait=60)
        events = bridged(world.instr1, room_id, world.bot_id)
        assert len(events) >= 5
        for event in events:
            content: dict[str, Any] = event.source["content"]
            html = content.get("formatted_body", "")
            for needle in ("<script", "javascript:", "onerror", "<iframe", "<img", "\r"):
                assert needle not in html.lower() and needle not in content["body"].lower()
            assert content[APLUS_KEY]["bridged"]["email"] == marie
        async with runner.store.transaction() as tx:
            states = {e.kind: e.state for e in await tx.inbound_entries()}
        assert states.get("loop") == "loop" and states.get("bounce") == "bounce"
        assert not matrix.inbox(world.instr1).undecryptable[room_id]
        await runner.check_alive()


def _now(runner: botsupport.BotRunner) -> Any:
    assert runner.app is not None
    return runner.app.clock.now()
