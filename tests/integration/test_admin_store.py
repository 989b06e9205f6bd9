"""The admin room's `Tx` methods on SQLite and PostgreSQL: edits by id, aggregates,
wiping a demande's personal data, and the audit purge through the triggers' permit."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bot.domain.model import DirectoryConflict, Role, Status, StatusTimes
from bot.store import Store
from bot.store.admin_tx import AUDIT_PURGE_PERMIT_KEY
from tests.integration.test_store import NOW, SECRETS_IN_CLEAR, new_demande, seed


async def raw_rows(store: Store, sql: str) -> list[tuple[object, ...]]:
    async with store.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


async def test_directory_edits_by_id_and_aggregates(store: Store) -> None:
    aidant, instructeur, g_aidant, g_caf = await seed(store)
    async with store.transaction() as tx:
        await tx.update_agent(
            replace(instructeur, roles=frozenset({Role.OPERATEUR}), matrix_id="@ivan:aplus.test")
        )
        with pytest.raises(DirectoryConflict, match="déjà"):
            await tx.update_agent(replace(instructeur, email=aidant.email))
    async with store.transaction() as tx:
        assert await tx.operators() == ["@ivan:aplus.test"]
        await tx.update_group(
            g_caf,
            name="CAF de Paris",
            organisation_id="caf",
            departements=frozenset({"75"}),
            bal=None,
        )
        with pytest.raises(DirectoryConflict):
            await tx.update_group(
                g_caf,
                name="France Services Paris 19",
                organisation_id="caf",
                departements=frozenset({"75"}),
                bal=None,
            )
    async with store.transaction() as tx:
        group = await tx.get_group(g_caf)
        assert group is not None and group.name == "CAF de Paris" and group.bal is None
        assert await tx.agent_counts_by_group() == {g_aidant: 1, g_caf: 1}

    demande_id = await new_demande(store, aidant, [g_caf])
    async with store.transaction() as tx:
        await tx.set_creation_step(demande_id, "ready", room_id="!room:aplus.test")
        assert await tx.open_demande_ids_of_group(g_caf) == [demande_id]
        assert await tx.open_demande_ids_of_group(g_aidant) == []
        assert (await tx.count_demandes_by_status())[Status.NOUVELLE] == 1
        await tx.enqueue_message(txn_id="t1", room_id="!room:aplus.test", content={"a": 1}, now=NOW)
        stats = await tx.outbox_stats()
        assert stats.pending == 1 and stats.oldest_pending_at == NOW and stats.refused == 0
        await tx.audit("intruder_kicked", actor="bot", now=NOW)
        await tx.audit("intruder_banned", actor="bot", now=NOW)
        assert await tx.count_audit(["intruder_kicked", "intruder_banned"]) == 2


async def test_wipe_leaves_nothing_to_decrypt(store: Store) -> None:
    aidant, _, _, g_caf = await seed(store)
    demande_id = await new_demande(store, aidant, [g_caf])
    async with store.transaction() as tx:
        await tx.set_creation_step(demande_id, "ready", room_id="!room:aplus.test")
        await tx.enqueue_message(
            txn_id="dossier", room_id="!room:aplus.test", content={"body": "x"}, now=NOW
        )
        await tx.update_status(
            demande_id, Status.CLOTUREE, StatusTimes(created_at=NOW, closed_at=NOW)
        )
    before = await raw_rows(store, "SELECT objet_enc, dossier_enc FROM demandes")
    assert all(len(bytes(v)) > 20 for v in before[0])  # type: ignore[arg-type]
    async with store.transaction() as tx:
        report = await tx.wipe_demande(demande_id, now=NOW)
        assert report.outbox_messages == 1
        assert await tx.wiped_demande_ids() == {demande_id}
        again = await tx.wipe_demande(demande_id, now=NOW)
        assert again.outbox_messages == 0  # idempotent
        assert await tx.pending_messages() == []
        record = await tx.get_demande(demande_id)
        assert record is not None and record.status is Status.CLOTUREE  # metadata stays
    after = await raw_rows(store, "SELECT objet_enc, dossier_enc FROM demandes")
    assert after == [(b"", b"")]
    outbox = await raw_rows(store, "SELECT content_enc, event_id FROM outbox_messages")
    assert outbox == [(b"", "!purged")]
    # And nothing of the usager in clear anywhere either.
    dump = repr(await raw_rows(store, "SELECT * FROM demandes")) + repr(
        await raw_rows(store, "SELECT * FROM outbox_messages")
    )
    for secret in SECRETS_IN_CLEAR:
        assert secret not in dump


async def test_audit_purge_only_through_the_permit(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.audit("old", actor="bot", now=NOW - timedelta(days=400))
        await tx.audit("recent", actor="bot", now=NOW - timedelta(days=10))
    # An ordinary DELETE is still refused, even of an old entry.
    with pytest.raises(DBAPIError, match="append-only"):
        async with store.engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit WHERE action = 'old'"))
    async with store.transaction() as tx:
        assert await tx.purge_audit_before(NOW - timedelta(days=365)) == 1
    async with store.transaction() as tx:
        assert [e.action for e in await tx.audit_entries()] == ["recent"]
        assert await tx.get_state(AUDIT_PURGE_PERMIT_KEY) is None  # never left behind
    # The permit does not open the way to younger entries, nor to updates.
    with pytest.raises(DBAPIError, match="append-only"):
        async with store.transaction() as tx:
            await tx.set_state(AUDIT_PURGE_PERMIT_KEY, "2000-01-01 00:00:00.000000")
            # The remaining entry is younger than the permit's cutoff.
            await tx._s.execute(text("DELETE FROM audit"))
    with pytest.raises(DBAPIError, match="append-only"):
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE audit SET actor = 'forged'"))


async def test_held_digest_emails_are_wiped_with_the_demande_and_never_sent(store: Store) -> None:
    agent, _, _, g_caf = await seed(store)
    demande_id = await new_demande(store, agent, [g_caf])
    aidant = agent.id
    async with store.transaction() as tx:
        await tx.set_email_digest(aidant, 17, NOW)
        assert await tx.email_digest_hours([aidant]) == {aidant: 17}
        await tx.set_demande_muted(demande_id, aidant, True, NOW)
        await tx.set_demande_muted(demande_id, aidant, True, NOW)  # idempotent
        assert await tx.muted_agents(demande_id) == {aidant}
        await tx.set_demande_muted(demande_id, aidant, False, NOW)
        assert await tx.muted_agents(demande_id) == set()
        body = b'{"text": "Dupontel Jeanne"}'
        assert await tx.add_digest_item(
            agent_id=aidant, demande_id=demande_id, event_key="ev1", body=body, now=NOW
        )
        assert not await tx.add_digest_item(
            agent_id=aidant, demande_id=demande_id, event_key="ev1", body=body, now=NOW
        )  # held once
        [held] = await tx.pending_digest_items()
        assert held.body == body
        assert await tx.add_digest_item(
            agent_id=aidant, demande_id=demande_id, event_key="ev2", body=body, now=NOW
        )
        assert await tx.drop_digest_items("ev2") == 1  # withdrawn before the digest
        assert [i.event_key for i in await tx.pending_digest_items()] == ["ev1"]
    sealed = await raw_rows(store, "SELECT body_enc FROM email_digest_items")
    assert b"Dupontel" not in bytes(sealed[0][0])  # type: ignore[arg-type]
    async with store.transaction() as tx:
        await tx.update_status(
            demande_id, Status.CLOTUREE, StatusTimes(created_at=NOW, closed_at=NOW)
        )
        await tx.wipe_demande(demande_id, now=NOW)
        assert await tx.pending_digest_items() == []
    assert await raw_rows(store, "SELECT body_enc FROM email_digest_items") == [(b"",)]
