"""The email bridge across a failover (issue 14): the active bot killed between the
inbox commit and the listener's 250; the standby takes over, posts the reply once,
and the sending MTA's retry is accepted without a second post."""

from __future__ import annotations

import signal
from pathlib import Path

import aiosmtplib
import pytest

from bot.devserver import LocalSynapse
from tests.integration.test_email_faults import KILLED_BY_CRASH_POINT
from tests.support import failover as ha
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import count_from, reply_with
from tests.support.email import (
    bridged,
    dossier_by_email,
    email_section,
    relay,
    seed_email_only_instructeur,
)
from tests.support.smtp import build_reply, reply_to, send_mail

pytestmark = pytest.mark.postgres


async def test_killed_between_the_inbox_commit_and_the_250_the_standby_posts_once(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, postgres_url: str
) -> None:
    files = await proc.register_bot(synapse, tmp_path / "bot")
    ha.enable_ha(files, postgres_url)
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
            await first.wait_log(r"lease acquired: epoch 1\b", 120)
            second.start()
            await ha.standby_port(second)
            dossier, room_id = await dossier_by_email(files, aidant, instr, sink, sophie)

            # The standby never listens: only the active bot answers SMTP.
            assert "email listener" not in second.log()
            message = build_reply(dossier, sender=sophie, text="Je traite le dossier demain.")
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await send_mail(
                    "127.0.0.1", listen_port, message, rcpt=reply_to(dossier), mail_from=sophie
                )
            assert await first.wait_exit() == KILLED_BY_CRASH_POINT, first.describe()

            # The standby takes over, posts the committed reply once; the MTA's retry of
            # the mail it saw no 250 for is accepted and not posted again.
            await second.wait_log(r"lease acquired: epoch 2\b", 60)
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

            await matrix.wait_for(events_recorded, 30, "the posted events recorded")
            assert await second.stop(signal.SIGTERM) == 0, second.describe()

    posted = [e.body for e in bridged(instr, room_id, files.user_id)]
    assert len(posted) == 2 and "Je traite le dossier demain." in posted[0], posted
    # One dossier email to Sophie, by Message-ID, across both processes.
    ids = [m.header("Message-ID") for m in sink.to(sophie)]
    assert len(ids) == len(set(ids)) == 1, ids
