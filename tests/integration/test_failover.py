"""Two real `aplus run` processes, one PostgreSQL database, the session's Synapse: one
is active, the other a warm and silent standby; killing or freezing the active one
hands over to the standby with no answer lost and none duplicated (issue 14).

The figures (takeover times, messages in flight, lost and duplicated counts) are
printed with `pytest -s` and copied into the README.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import asyncpg
import nio
import pytest

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from bot.services.lease import EXIT_LEASE_LOST
from tests.support import bot as botsupport
from tests.support import failover as ha
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import next_reply, reply_with, say

pytestmark = pytest.mark.postgres


async def _active_and_standby(
    files: proc.BotFiles,
) -> tuple[proc.AplusProcess, proc.AplusProcess, int]:
    first, second = proc.bot_process(files), proc.bot_process(files)
    first.start()
    await first.wait_log(r"lease acquired: epoch 1\b", 120)
    await first.wait_log(r"health endpoint on http", 120)
    second.start()
    port = await ha.standby_port(second)
    return first, second, port


async def test_sigkill_of_the_active_bot_the_standby_answers_with_nothing_lost_or_doubled(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, postgres_url: str
) -> None:
    files, admin, people = await ha.setup(synapse, clients, tmp_path, postgres_url)
    aidant, talker = people["aidant"], people["talker"]
    synapse_log_from = synapse.log_path.stat().st_size
    first, second, standby_port = await _active_and_standby(files)
    with proc.killed_at_exit(first, second):
        # The standby is warm and silent: /healthz says so; it never logged in.
        assert (await ha.healthz(standby_port))["status"] == "standby"
        dm = await botsupport.open_direct_chat(aidant, files.user_id)
        talk = await botsupport.open_direct_chat(talker, files.user_id)
        await say(aidant, dm, "!aide")
        await reply_with(aidant, dm, files.user_id, "!demande", wait=60)
        assert "logged in as" not in second.log()
        assert len(await admin.devices(files.user_id)) == 1

        traffic = ha.Traffic(talker, talk)
        traffic.start()
        await matrix.wait_for(lambda: len(traffic.sent) >= 20, 60, "20 messages sent")
        in_flight = len(traffic.sent)
        killed_at = time.monotonic()
        first.send(signal.SIGKILL)
        assert await first.wait_exit() == -signal.SIGKILL
        before = matrix.inbox(aidant).events(dm)
        await say(aidant, dm, "!aide")
        await next_reply(aidant, dm, files.user_id, after=_from(before, files.user_id), wait=60)
        takeover_s = time.monotonic() - killed_at
        await second.wait_log(r"lease acquired: epoch 2\b", 5)
        await matrix.wait_for(
            lambda: len(traffic.sent) >= in_flight + 20, 60, "20 more messages sent"
        )
        await traffic.stop()
        counts = await ha.count(
            postgres_url, admin, traffic, files.user_id, bot_token=await ha.bot_token(files)
        )
        # `aplus check` names the active bot: the former standby, at epoch 2.
        report = await proc.run_aplus_async("check", "--config", str(files.config))
        [active] = [line for line in report.stdout.splitlines() if "bot actif :" in line]
        assert active.startswith("OK") and f"/{second.pid}/" in active, report.stdout
        assert "(époque 2)" in active, active
        assert await second.stop(signal.SIGTERM) == 0, second.describe()

    print(
        f"\nFAILOVER sigkill: answer to !aide {takeover_s:.1f} s after the kill; "
        f"{counts.questions} messages ({in_flight} before the kill), "
        f"lost {counts.lost}, duplicated {counts.duplicated}"
    )
    assert counts.lost == 0 and counts.duplicated == 0, counts
    assert counts.bot_events == counts.decrypted, counts
    # One device for the bot across both processes; no one-time key clash.
    assert len(await admin.devices(files.user_id)) == 1
    assert b"already exists" not in synapse.log_path.read_bytes()[synapse_log_from:]


async def test_a_frozen_active_bot_is_replaced_and_on_resuming_exits_without_acting(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, postgres_url: str
) -> None:
    files, admin, people = await ha.setup(synapse, clients, tmp_path, postgres_url)
    aidant, talker = people["aidant"], people["talker"]
    first, second, _ = await _active_and_standby(files)
    with proc.killed_at_exit(first, second):
        dm = await botsupport.open_direct_chat(aidant, files.user_id)
        talk = await botsupport.open_direct_chat(talker, files.user_id)
        traffic = ha.Traffic(talker, talk)
        traffic.start()
        await matrix.wait_for(lambda: len(traffic.sent) >= 20, 60, "20 messages sent")
        in_flight = len(traffic.sent)
        stopped_at = time.monotonic()
        first.send(signal.SIGSTOP)
        before = matrix.inbox(aidant).events(dm)
        await say(aidant, dm, "!aide")
        await next_reply(aidant, dm, files.user_id, after=_from(before, files.user_id), wait=60)
        takeover_s = time.monotonic() - stopped_at
        await second.wait_log(r"lease acquired: epoch 2\b", 5)
        # The frozen holder's database connections are ended by the takeover: whatever
        # it had open is rolled back, and it can commit nothing afterwards (the fence).
        await second.wait_log(r"connection\(s\) of the previous holder ended", 5)
        # Frozen 30 s in all, then resumed: it must exit at once, doing nothing.
        await _sleep_until(stopped_at + 30)
        resumed_at = datetime.now()
        first.send(signal.SIGCONT)
        assert await first.wait_exit() == EXIT_LEASE_LOST, first.describe()
        # Ended by its watchdog or its SIGCONT handler, before anything else: not one
        # line of its log is from after the resume.
        last_line = first.log().rstrip("\n").rsplit("\n", 1)[-1]
        assert last_line.startswith("lease: ") and last_line.endswith("; exiting"), last_line
        assert all(at < resumed_at for at in _log_times(first.log())), first.log()[-2000:]
        await traffic.stop()
        counts = await ha.count(
            postgres_url, admin, traffic, files.user_id, bot_token=await ha.bot_token(files)
        )
        assert await second.stop(signal.SIGTERM) == 0, second.describe()

    print(
        f"\nFAILOVER sigstop: answer to !aide {takeover_s:.1f} s after the freeze; "
        f"{counts.questions} messages ({in_flight} before the freeze), "
        f"lost {counts.lost}, duplicated {counts.duplicated}"
    )
    assert counts.lost == 0 and counts.duplicated == 0, counts
    assert counts.bot_events == counts.decrypted, counts
    assert len(await admin.devices(files.user_id)) == 1


def _from(events: list[object], sender: str) -> int:
    return len([e for e in events if getattr(e, "sender", None) == sender])


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


def _log_times(log: str) -> list[datetime]:
    """The timestamps of the log's lines (the format of `bot.log_privacy`, local time)."""
    return [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        for m in re.finditer(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", log, re.M)
    ]


@pytest.mark.parametrize("death", ["after_create_room", "after_invites", "sigkill_after_commit"])
async def test_the_active_bot_killed_mid_opening_the_standby_finishes_it_once(
    synapse: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
    postgres_url: str,
    death: str,
) -> None:
    """The crash points of `test_process_crash`, with the standby (not a restart)
    finishing the opening: one room, one invitation each, one dossier, one reply."""
    admin = proc.AdminApi.of(synapse, await clients.user("admin", admin=True))
    files = await proc.register_bot(synapse, tmp_path / "bot")
    ha.enable_ha(files, postgres_url)
    people = await _opening_directory(files, clients)
    aidant = people["aidant"]
    killed = death.startswith("sigkill")
    first = proc.bot_process(files, env={} if killed else {"APLUS_CRASH_AT": death})
    second = proc.bot_process(files)
    with proc.killed_at_exit(first, second):
        first.start()
        await first.wait_log(r"lease acquired: epoch 1\b", 120)
        second.start()
        await ha.standby_port(second)
        dm = await botsupport.open_direct_chat(aidant, files.user_id)
        await say(aidant, dm, botsupport.filled_form())
        recap = await next_reply(aidant, dm, files.user_id, after=0)
        assert "!confirmer" in recap, recap
        await say(aidant, dm, "!confirmer")
        if killed:
            await matrix.wait_for(
                lambda: _demandes_in(postgres_url), 30, "the demande committed", interval=0.01
            )
            first.send(signal.SIGKILL)
            assert await first.wait_exit() == -signal.SIGKILL
        else:
            assert await first.wait_exit() == CRASHED, first.describe()
        opened = await next_reply(aidant, dm, files.user_id, after=1, wait=90)
        await second.wait_log(r"lease acquired: epoch 2\b", 5)
        await matrix.wait_for(
            lambda: _opened_and_idle(postgres_url), 90, "the demande ready, the outbox empty"
        )
        assert await second.stop(signal.SIGTERM) == 0, second.describe()

    [(reference, room_id)] = await _ready_demandes(postgres_url)
    assert reference in opened and "ouverte" in opened, opened
    assert await admin.rooms_with_state(files.user_id, "fr.aplus.demande", reference=reference) == [
        room_id
    ]
    timeline = await admin.timeline(room_id)
    participants = {c.user_id for c in people.values()}
    assert proc.invites_per_user(timeline) == dict.fromkeys(participants, 1)
    assert len(proc.sent_by(timeline, files.user_id, "m.room.encrypted")) == 1  # the dossier
    assert len(proc.sent_by(await admin.timeline(dm), files.user_id, "m.room.encrypted")) == 2
    assert len(await admin.devices(files.user_id)) == 1
    texts = await matrix.join_and_read(people["instr1"], room_id, 1)
    assert "Dupontel" in texts[0], texts


CRASHED = 137  # bot.faults: os._exit(137), like a kill -9


async def _opening_directory(
    files: proc.BotFiles, clients: matrix.Clients
) -> dict[str, nio.AsyncClient]:
    people = {
        "aidant": await clients.client("aidant"),
        "instr1": await clients.client("instr1"),
        "instr2": await clients.client("instr2"),
    }
    directory = botsupport.Directory()
    async with files.store() as store:
        await botsupport.add_group(store, directory, "fs", "france_services", ["95"])
        await botsupport.add_group(store, directory, "caf", "caf", ["95"])
        for key, client in people.items():
            role, group = ([Role.AIDANT], "fs") if key == "aidant" else ([Role.INSTRUCTEUR], "caf")
            await botsupport.add_agent(
                store, directory, key, matrix_id=client.user_id, roles=role, group=group
            )
    return people


async def _query(database_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(ha.asyncpg_dsn(database_url))
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def _demandes_in(database_url: str) -> bool:
    return bool(await _query(database_url, "SELECT id FROM demandes"))


async def _ready_demandes(database_url: str) -> list[tuple[str, str]]:
    rows = await _query(
        database_url, "SELECT reference, room_id FROM demandes WHERE creation_step = 'ready'"
    )
    return [(str(r["reference"]), str(r["room_id"])) for r in rows]


async def _opened_and_idle(database_url: str) -> bool:
    pending = await _query(database_url, "SELECT txn_id FROM outbox_messages WHERE sent_at IS NULL")
    return len(await _ready_demandes(database_url)) == 1 and not pending


KILLS = 20


# Twenty takeovers and twenty process starts: longer than the default per-test limit.
@pytest.mark.timeout(900)
async def test_twenty_kills_alternating_between_the_two_bots_keep_one_device_and_its_keys(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, postgres_url: str
) -> None:
    """Each takeover starts the crypto store the other process left: no one-time key
    clash on the homeserver, and a message sent to the bot after each one decrypts
    (the bot answers it) and its answer decrypts (the aidant reads it)."""
    files, admin, people = await ha.setup(synapse, clients, tmp_path, postgres_url)
    aidant = people["aidant"]
    synapse_log_from = synapse.log_path.stat().st_size
    active, standby, _ = await _active_and_standby(files)
    processes = [active, standby]
    try:
        dm = await botsupport.open_direct_chat(aidant, files.user_id)
        takeovers: list[float] = []
        for kill in range(1, KILLS + 1):
            killed_at = time.monotonic()
            active.send(signal.SIGKILL)
            assert await active.wait_exit() == -signal.SIGKILL
            before = _from(matrix.inbox(aidant).events(dm), files.user_id)
            await say(aidant, dm, "!aide")
            answer = await next_reply(aidant, dm, files.user_id, after=before, wait=60)
            takeovers.append(time.monotonic() - killed_at)
            assert "!demande" in answer, answer
            assert not matrix.inbox(aidant).undecryptable[dm]
            await standby.wait_log(rf"lease acquired: epoch {kill + 1}\b", 5)
            # The killed one comes back (systemd would) as the new standby.
            active, standby = standby, proc.bot_process(files)
            processes.append(standby)
            standby.start()
            await ha.standby_port(standby)
        # The standby first: stopped last, the active one would hand it the lease.
        assert await standby.stop(signal.SIGTERM) == 0, standby.describe()
        assert await active.stop(signal.SIGTERM) == 0, active.describe()
    finally:
        for process in processes:
            process.kill()

    # Each epoch was taken by one process only, in order.
    holders: dict[int, int] = {}
    for index, process in enumerate(processes):
        for found in re.finditer(r"lease acquired: epoch (\d+),", process.log()):
            epoch = int(found.group(1))
            assert epoch not in holders, (epoch, holders)
            holders[epoch] = index
    assert sorted(holders) == list(range(1, KILLS + 2))
    assert len(await admin.devices(files.user_id)) == 1
    assert b"already exists" not in synapse.log_path.read_bytes()[synapse_log_from:]
    print(
        f"\nFAILOVER {KILLS} alternating kills: !aide answered after "
        f"{min(takeovers):.1f}-{max(takeovers):.1f} s (median "
        f"{sorted(takeovers)[len(takeovers) // 2]:.1f} s)"
    )
