"""The archive of the bot's room keys, on SQLite and PostgreSQL: sealed, ledger-bound."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from bot.store import Store
from tests.integration.test_store import NOW, new_demande, seed

ROOM = "!demande:aplus.test"
OTHER_ROOM = "!autre:aplus.test"
KEY = "AgAAAAB-session-key-at-index-0"


async def test_room_keys_sealed_and_only_for_authorised_participants(store: Store) -> None:
    aidant, instructeur, _, g_caf = await seed(store)
    demande = await new_demande(store, aidant, [g_caf])
    async with store.transaction() as tx:
        await tx.set_creation_step(demande, "ready", room_id=ROOM)
        await tx.add_participant(
            demande_id=demande, agent=aidant, kind="aidant", added_by="bot", now=NOW
        )
        await tx.archive_room_key(
            room_id=ROOM,
            session_id="S1",
            first_index=0,
            session_key=KEY,
            users=["@alice:aplus.test", "@intrus:aplus.test"],
            now=NOW,
        )
        # The first key recorded for a user wins (a later index never replaces index 0).
        await tx.archive_room_key(
            room_id=ROOM,
            session_id="S1",
            first_index=7,
            session_key="later",
            users=["@alice:aplus.test"],
            now=NOW,
        )
        # A room that is no demande of hers: never given back for her.
        await tx.archive_room_key(
            room_id=OTHER_ROOM,
            session_id="S2",
            first_index=0,
            session_key=KEY,
            users=["@alice:aplus.test"],
            now=NOW,
        )
        [kept] = await tx.room_keys_for("@alice:aplus.test")
        assert (kept.room_id, kept.session_id, kept.first_index, kept.session_key) == (
            ROOM,
            "S1",
            0,
            KEY,
        )
        # Someone the ledger does not authorise gets nothing back.
        assert await tx.room_keys_for("@intrus:aplus.test") == []

        await tx.record_key_deliveries("S1", [("@alice:aplus.test", "DEV1")], now=NOW)
        await tx.record_key_deliveries("S1", [("@alice:aplus.test", "DEV1")], now=NOW)
        assert await tx.key_deliveries("@alice:aplus.test") == {("S1", "DEV1")}

        # Removed from the ledger: her keys are no longer given to any device of hers.
        await tx.remove_participant(
            demande_id=demande, agent_id=aidant.id, now=NOW + timedelta(hours=1)
        )
        assert await tx.room_keys_for("@alice:aplus.test") == []
    async with store.engine.connect() as conn:
        blobs = (await conn.execute(text("SELECT session_key_enc FROM room_keys"))).scalars()
        assert all(KEY.encode() not in bytes(b) for b in blobs)
    async with store.transaction() as tx:
        assert await tx.forget_room_keys(ROOM) == 2
        assert await tx.key_deliveries("@alice:aplus.test") == set()
    assert instructeur.id != aidant.id
