"""The spaces service holds no database transaction while it asks the homeserver.

On SQLite a transaction holds the database's one write lock (`BEGIN IMMEDIATE`): held
over a homeserver request, every other write of the bot waits for that request, and
fails after the busy timeout when the homeserver is slow (under load, an outage).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy.engine import make_url

from bot.services.spaces import ARCHIVE_KEY, SPACE_KEY
from tests.services.conftest import World


def _write_lock_taken(world: World) -> bool:
    path = make_url(str(world.store.engine.url)).database
    probe = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")  # at once, or not at all
    except sqlite3.OperationalError:
        return True
    else:
        probe.execute("ROLLBACK")
        return False
    finally:
        probe.close()


async def test_a_room_leaves_the_spaces_of_a_group_no_longer_concerned_without_a_lock(
    world: World,
) -> None:
    demande = await world.open_demande()
    assert demande.room_id
    gone = world.groups["cpam"]
    async with world.store.transaction() as tx:
        await tx.set_state(SPACE_KEY.format(group_id=gone.id), "!space-cpam:localhost")
        await tx.set_state(ARCHIVE_KEY.format(group_id=gone.id), "!archive-cpam:localhost")
    locked_during: list[tuple[str, str]] = []
    put_state = world.gw.put_state

    async def observed(room_id: str, event_type: str, content: Any, state_key: str = "") -> str:
        if _write_lock_taken(world):
            locked_during.append((room_id, event_type))
        return await put_state(room_id, event_type, content, state_key)

    world.gw.put_state = observed  # type: ignore[method-assign]
    await world.parts.spaces.place(demande, [], before=[gone.id])
    left = [c.args["room_id"] for c in world.gw.calls_of("put_state")]
    assert "!space-cpam:localhost" in left and "!archive-cpam:localhost" in left
    assert locked_during == []
