"""More events in a room than one sync timeline holds (100) while the bot is away: the
sync comes back *limited*; the bot reads the gap back and answers every message once.

On the old code 124 of 235 messages sent during a 30 s database outage were never
answered (`test_db_outage.py`); here the bot is simply stopped while 150 arrive.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bot.devserver import LocalSynapse
from tests.support import bot as botsupport
from tests.support import failover as ha
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import say

pytestmark = pytest.mark.postgres

WHILE_AWAY = 150


async def test_messages_beyond_one_sync_timeline_while_the_bot_is_away_are_all_answered(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, postgres_url: str
) -> None:
    files, admin, people = await ha.setup(synapse, clients, tmp_path, postgres_url)
    talker = people["talker"]
    first = proc.bot_process(files)
    second = proc.bot_process(files)
    with proc.killed_at_exit(first, second):
        first.start()
        await first.wait_log(r"lease acquired: epoch 1\b", 120)
        talk = await botsupport.open_direct_chat(talker, files.user_id)
        traffic = ha.Traffic(talker, talk)
        traffic.sent.append(await say(talker, talk, "avant l'arrêt"))
        assert await first.stop(signal.SIGTERM) == 0, first.describe()
        for n in range(WHILE_AWAY):
            traffic.sent.append(await say(talker, talk, f"pendant l'arrêt {n}"))
        second.start()
        await second.wait_log(r"event\(s\) read back from a gap", 120)
        counts = await ha.count(
            postgres_url, admin, traffic, files.user_id, bot_token=await ha.bot_token(files)
        )
        assert await second.stop(signal.SIGTERM) == 0, second.describe()
    assert counts.questions == WHILE_AWAY + 1
    assert counts.lost == 0 and counts.duplicated == 0, counts
    assert counts.bot_events == counts.decrypted, counts
