"""A 30 s PostgreSQL outage under traffic (issue 14, item 2): a private cluster
(`initdb`, `pg_ctl`) on a free port is stopped for 30 s while a member writes to the
active bot (`[ha]`, a real `aplus run`) every 100 ms.

While it is down: the listener answers `451 4.3.0`, `/healthz` names the database as
failing. Afterwards: the same process renews its lease (no other holder: same epoch),
every message is answered once, none twice, and the listener answers from the ledger.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from bot.devserver import LocalSynapse
from tests.support import bot as botsupport
from tests.support import failover as ha
from tests.support import matrix
from tests.support import process as proc
from tests.support.email import email_section, relay
from tests.support.pgcluster import private_cluster
from tests.support.smtp import send_mail

pytestmark = pytest.mark.postgres

OUTAGE_S = 30
SOMEONE = "sophie.martin@caf95.example.test"
A_REPLY_ADDRESS = "reply+unknowntoken0123456789@reponse.aplus.test"


def _mail() -> EmailMessage:
    message = EmailMessage()
    message["From"] = SOMEONE
    message["To"] = A_REPLY_ADDRESS
    message["Subject"] = "Re: votre demande"
    message.set_content("Une réponse.")
    return message


async def test_a_30_s_database_outage_under_traffic_loses_and_doubles_nothing(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with private_cluster() as cluster, relay() as sink:
        url = cluster.url()
        files, admin, people = await ha.setup(synapse, clients, tmp_path, url)
        listen_port = proc.free_port()
        files.config.write_text(
            files.config.read_text()
            + email_section(sink.port, listen_port, retry_initial_seconds=None)
        )
        talker = people["talker"]
        bot = proc.bot_process(files)
        with proc.killed_at_exit(bot):
            bot.start()
            await bot.wait_log(r"lease acquired: epoch 1\b", 120)
            found = await bot.wait_log(r"health: health endpoint on http://127\.0\.0\.1:(\d+)", 120)
            health_port = int(found.group(1))
            talk = await botsupport.open_direct_chat(talker, files.user_id)
            traffic = ha.Traffic(talker, talk)
            traffic.start()
            await matrix.wait_for(lambda: len(traffic.sent) >= 10, 60, "10 messages sent")
            # Up: an unknown reply address is refused for good (the ledger answered).
            assert (
                await send_mail(
                    "127.0.0.1", listen_port, _mail(), rcpt=A_REPLY_ADDRESS, mail_from=SOMEONE
                )
            )[0] == 550

            down_at = time.monotonic()
            await cluster.stop()
            in_flight = len(traffic.sent)
            code, text = await send_mail(
                "127.0.0.1", listen_port, _mail(), rcpt=A_REPLY_ADDRESS, mail_from=SOMEONE
            )
            assert (code, text) == (451, "4.3.0 Temporary failure, please try again later")

            async def database_failing() -> bool:
                body = await ha.healthz(health_port)
                checks = body["checks"]
                assert isinstance(checks, dict)
                return bool(checks["database"]["state"] == "en panne")

            await matrix.wait_for(database_failing, 25, "/healthz: database failing")
            assert (await ha.healthz(health_port))["status"] == "en panne"
            await asyncio.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
            during = len(traffic.sent) - in_flight
            await cluster.start()

            await bot.wait_log(r"lease: renewed, side effects resume", 60)
            await matrix.wait_for(
                lambda: len(traffic.sent) >= in_flight + during + 10, 60, "10 more messages"
            )
            await traffic.stop()
            counts = await ha.count(
                url, admin, traffic, files.user_id, bot_token=await ha.bot_token(files)
            )
            assert (await ha.healthz(health_port))["status"] == "ok"
            assert (
                await send_mail(
                    "127.0.0.1", listen_port, _mail(), rcpt=A_REPLY_ADDRESS, mail_from=SOMEONE
                )
            )[0] == 550
            assert bot.returncode() is None, bot.describe()  # the same process, recovered
            assert await ha.lease_epochs(url) is not None
            assert (await ha.lease_epochs(url) or ("", 0))[1] == 1
            assert await bot.stop(signal.SIGTERM) == 0, bot.describe()

    print(
        f"\nDB OUTAGE {OUTAGE_S} s: {counts.questions} messages ({during} sent during the "
        f"outage), lost {counts.lost}, duplicated {counts.duplicated}"
    )
    assert counts.lost == 0 and counts.duplicated == 0, counts
    assert counts.bot_events == counts.decrypted, counts


async def test_a_database_restart_during_a_lease_leaves_one_active_bot_at_any_instant(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """Both bots running, the database restarted under traffic: whoever renews or takes
    the lease first is the one active bot; the epochs strictly increase, each taken by
    one process only; nothing lost, nothing answered twice."""
    async with private_cluster() as cluster:
        url = cluster.url()
        files, admin, people = await ha.setup(synapse, clients, tmp_path, url)
        talker = people["talker"]
        first, second = proc.bot_process(files), proc.bot_process(files)
        with proc.killed_at_exit(first, second):
            first.start()
            await first.wait_log(r"lease acquired: epoch 1\b", 120)
            second.start()
            await ha.standby_port(second)
            talk = await botsupport.open_direct_chat(talker, files.user_id)
            traffic = ha.Traffic(talker, talk)
            traffic.start()
            await matrix.wait_for(lambda: len(traffic.sent) >= 10, 60, "10 messages sent")
            await cluster.stop()
            await asyncio.sleep(6)  # longer than the lease: both may contend afterwards
            await cluster.start()
            restarted_at = len(traffic.sent)
            await matrix.wait_for(
                lambda: len(traffic.sent) >= restarted_at + 20, 90, "20 more messages"
            )
            await traffic.stop()
            counts = await ha.count(
                url, admin, traffic, files.user_id, bot_token=await ha.bot_token(files)
            )
            survivors = [p for p in (first, second) if p.returncode() is None]
            exited = [p for p in (first, second) if p.returncode() is not None]
            # A bot that lost the lease exits 75 (systemd would restart it as standby).
            assert all(p.returncode() == 75 for p in exited), [p.describe() for p in exited]
            for process in survivors:
                assert await process.stop(signal.SIGTERM) == 0, process.describe()

    holders: dict[int, int] = {}
    for index, process in enumerate((first, second)):
        for found in re.finditer(r"lease acquired: epoch (\d+),", process.log()):
            epoch = int(found.group(1))
            assert epoch not in holders, (epoch, holders)
            holders[epoch] = index
    assert sorted(holders) == list(range(1, len(holders) + 1)), holders
    print(
        f"\nDB RESTART: epochs {sorted(holders)}, {counts.questions} messages, "
        f"lost {counts.lost}, duplicated {counts.duplicated}"
    )
    assert counts.lost == 0 and counts.duplicated == 0, counts
    assert counts.bot_events == counts.decrypted, counts
