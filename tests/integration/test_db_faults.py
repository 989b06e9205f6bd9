"""Transient PostgreSQL errors while traffic flows: each is retried, nothing is lost or
answered twice (issue 14, item 2).

The real `aplus run` (the active bot of `[ha]`) answers a member who writes every
100 ms. A trigger on the bot's outbox makes the database itself refuse the next
inserts, as PostgreSQL does under contention or on an administrator's command: a
serialization failure (40001), a deadlock (40P01), or the connection terminated in
the middle of the transaction (`pg_terminate_backend`). A sequence counts the faults:
unlike the failed transactions, it is not rolled back.
"""

from __future__ import annotations

import signal
from pathlib import Path

import asyncpg
import pytest

from bot.devserver import LocalSynapse
from tests.support import bot as botsupport
from tests.support import failover as ha
from tests.support import matrix
from tests.support import process as proc

pytestmark = pytest.mark.postgres

FAULTS = 3
RAISE = {
    "serialization_failure": "RAISE EXCEPTION 'injected' USING ERRCODE = '40001';",
    "deadlock": "RAISE EXCEPTION 'injected' USING ERRCODE = '40P01';",
    "terminated_mid_transaction": "PERFORM pg_terminate_backend(pg_backend_pid());",
}


async def _inject(database_url: str, fault: str) -> None:
    conn = await asyncpg.connect(ha.asyncpg_dsn(database_url))
    try:
        await conn.execute(
            f"""
            CREATE SEQUENCE injected_faults;
            CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('injected_faults') <= {FAULTS} THEN
                    {RAISE[fault]}
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER inject_fault BEFORE INSERT ON outbox_messages
                FOR EACH ROW EXECUTE FUNCTION inject_fault();
            """
        )
    finally:
        await conn.close()


async def _faults_fired(database_url: str) -> bool:
    conn = await asyncpg.connect(ha.asyncpg_dsn(database_url))
    try:
        return int(await conn.fetchval("SELECT last_value FROM injected_faults")) > FAULTS
    finally:
        await conn.close()


@pytest.mark.parametrize("fault", sorted(RAISE))
async def test_a_transient_database_error_is_retried_with_nothing_lost_or_doubled(
    synapse: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
    postgres_url: str,
    fault: str,
) -> None:
    files, admin, people = await ha.setup(synapse, clients, tmp_path, postgres_url)
    talker = people["talker"]
    bot = proc.bot_process(files)
    with proc.killed_at_exit(bot):
        bot.start()
        await bot.wait_log(r"lease acquired: epoch 1\b", 120)
        talk = await botsupport.open_direct_chat(talker, files.user_id)
        traffic = ha.Traffic(talker, talk)
        traffic.start()
        await matrix.wait_for(lambda: len(traffic.sent) >= 10, 60, "10 messages sent")
        await _inject(postgres_url, fault)
        await matrix.wait_for(lambda: _faults_fired(postgres_url), 60, f"{FAULTS} faults")
        injected_at = len(traffic.sent)
        await matrix.wait_for(
            lambda: len(traffic.sent) >= injected_at + 10, 60, "10 more messages sent"
        )
        await traffic.stop()
        counts = await ha.count(
            postgres_url, admin, traffic, files.user_id, bot_token=await ha.bot_token(files)
        )
        assert await bot.stop(signal.SIGTERM) == 0, bot.describe()

    print(
        f"\nDB FAULT {fault}: {FAULTS} injected, {counts.questions} messages, "
        f"lost {counts.lost}, duplicated {counts.duplicated}"
    )
    assert counts.lost == 0 and counts.duplicated == 0, counts
    assert counts.bot_events == counts.decrypted, counts
