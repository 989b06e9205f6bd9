"""The Synapse admin API calls of the retention job, against the real homeserver."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import nio

from bot.devserver import LocalSynapse
from bot.services.synapse_admin import SynapseAdmin
from tests.support import matrix

NO_BOT_DATABASE = True


def _rows(synapse: LocalSynapse, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{synapse.database_path}?mode=ro", uri=True)
    try:
        return list(con.execute(sql, params).fetchall())
    finally:
        con.close()


async def _plain(client: nio.AsyncClient, room_id: str, body: str) -> str:
    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
    assert isinstance(resp, nio.RoomSendResponse), resp
    return str(resp.event_id)


async def test_purge_history_deletes_the_last_event_before_the_moment(
    synapse: LocalSynapse, clients: matrix.Clients
) -> None:
    """The retention job purges a direct chat "up to the form's confirmation": the
    confirmation itself must go, even when another room's event came in between (the
    demande room being created), which makes Synapse's `purge_up_to_ts` keep it."""
    token = (await clients.user("srvadmin", admin=True)).access_token
    aidant = await clients.client("aidant")
    rooms = []
    for _ in range(2):
        created = await aidant.room_create()
        assert isinstance(created, nio.RoomCreateResponse), created
        rooms.append(created.room_id)
    dm, elsewhere = rooms
    await matrix.sync_until(aidant, lambda: all(r in aidant.rooms for r in rooms), what="rooms")
    form = await _plain(aidant, dm, "le formulaire")
    confirmation = await _plain(aidant, dm, "!confirmer")
    moment = int(time.time() * 1000) + 1  # the bot records the confirmation after it
    await asyncio.sleep(0.01)
    await _plain(aidant, elsewhere, "la demande est créée")
    kept = await _plain(aidant, dm, "Demande ouverte")

    admin = SynapseAdmin(synapse.base_url, token)
    try:
        await admin.purge_history(dm, moment)
    finally:
        await admin.close()

    left = {r[0] for r in _rows(synapse, "SELECT event_id FROM events WHERE room_id = ?", dm)}
    assert form not in left and confirmation not in left
    assert kept in left
