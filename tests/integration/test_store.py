"""Every `Tx` behaviour, on SQLite and on PostgreSQL (the `store` fixture runs both)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, StatementError

from bot.domain.model import (
    Agent,
    DemandeForm,
    Mandat,
    MandatType,
    Role,
    Status,
    StatusTimes,
    Usager,
    Usefulness,
)
from bot.store import (
    DirectoryConflict,
    NotFound,
    Store,
    current_revision,
    db,
    generate_key,
    head_revision,
    upgrade,
)
from bot.store.crypto import FieldCipher, TamperedDataError, UnknownKeyError
from bot.store.db import create_engine
from bot.store.tables import metadata

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PRENOM, NOM = "Gwendoline", "Kerbrat-Zyskowski"
NIR = "2 84 05 75 123 456 78"
DESCRIPTION = "Suspension du RSA depuis janvier malgré le dossier complet déposé"
OBJET = "Rétablissement des droits RSA suspendus"
SECRETS_IN_CLEAR = [PRENOM, NOM, NIR, DESCRIPTION, OBJET, "0612345678", "12 rue des Lilas"]


def make_form(*, nom: str = NOM, description: str = DESCRIPTION) -> DemandeForm:
    return DemandeForm(
        territoire="75",
        organisations=("caf", "cpam"),
        categorie="rsa",
        objet=OBJET,
        usager=Usager(
            prenom=PRENOM,
            nom=nom,
            date_naissance=date(1984, 5, 12),
            nir=NIR,
            numero_allocataire_caf="7654321",
            adresse="12 rue des Lilas, 75019 Paris",
            telephone="0612345678",
        ),
        description=description,
        mandat=Mandat(type=MandatType.PAPIER, date=date(2026, 3, 1), attestation=True),
    )


async def seed(store: Store) -> tuple[Agent, Agent, int, int]:
    """An aidant, an instructeur, and their two groups."""
    async with store.transaction() as tx:
        g_aidant = await tx.upsert_group(
            name="France Services Paris 19",
            organisation_id="france-services",
            departements=frozenset({"75"}),
            bal=None,
        )
        g_caf = await tx.upsert_group(
            name="CAF Paris",
            organisation_id="caf",
            departements=frozenset({"75", "92"}),
            bal="caf75@example.fr",
        )
        aidant, _ = await tx.upsert_agent(
            first_name="Alice",
            last_name="Aidant",
            email="alice@fs.example.fr",
            matrix_id="@alice:aplus.test",
            group_id=g_aidant.id,
            roles=frozenset({Role.AIDANT}),
        )
        instructeur, _ = await tx.upsert_agent(
            first_name="Ivan",
            last_name="Instructeur",
            email="ivan@caf.example.fr",
            matrix_id=None,
            group_id=g_caf.id,
            roles=frozenset({Role.INSTRUCTEUR, Role.RESPONSABLE}),
        )
    return aidant, instructeur, g_aidant.id, g_caf.id


async def new_demande(store: Store, aidant: Agent, group_ids: list[int], **kw: str) -> int:
    async with store.transaction() as tx:
        reference = await tx.next_reference(2026)
        record = await tx.create_demande(
            reference=reference,
            form=make_form(**kw),
            aidant_agent_id=aidant.id,
            group_ids=group_ids,
            draft_id=None,
            now=NOW,
        )
    return record.id


async def raw(store: Store, sql: str, **params: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(sql), params)


# ---------------------------------------------------------------- schema and engine


async def test_open_upgrades_to_head_and_is_idempotent(
    store: Store, store_url: str, field_cipher: FieldCipher
) -> None:
    assert head_revision() == "0016_email_only"
    assert await store.current_revision() == head_revision()
    again = await Store.open(store_url, field_cipher)  # already at head: no-op
    try:
        assert await again.current_revision() == head_revision()
    finally:
        await again.close()


def _diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def test_migrated_schema_equals_models(store_url: str) -> None:
    # The sync CLI helpers run their own event loop: call them from a worker thread.
    assert await asyncio.to_thread(current_revision, store_url) is None
    await asyncio.to_thread(upgrade, store_url)
    assert await asyncio.to_thread(current_revision, store_url) == head_revision()
    engine = create_engine(store_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_sqlite_pragmas(sqlite_url: str, field_cipher: FieldCipher) -> None:
    store = await Store.open(sqlite_url, field_cipher)
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 10_000
    finally:
        await store.close()


async def test_a_locked_sqlite_transaction_names_the_one_holding_it(
    sqlite_url: str, field_cipher: FieldCipher, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """« database is locked » says which of this process's transactions held the lock,
    and where it was waiting: the one clue a rare lock-up leaves."""
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 100)
    store = await Store.open(sqlite_url, field_cipher)
    holding, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with store.transaction() as tx:
            await tx.set_state("held", "1")
            holding.set()
            await release.wait()

    task = asyncio.create_task(holder(), name="the-holder")
    try:
        await holding.wait()
        with pytest.raises(OperationalError, match="locked"):
            async with store.transaction() as tx:
                await tx.set_state("waiting", "1")
        warning = next(r.getMessage() for r in caplog.records if "locked" in r.getMessage())
        assert "the-holder" in warning and "test_store.py" in warning and "holder" in warning
        assert [t for t in store.open_transactions() if t.startswith("the-holder")]
        release.set()
        await task
        assert store.open_transactions() == []
        async with store.transaction() as tx:  # the lock is free again
            await tx.set_state("waiting", "1")
    finally:
        release.set()
        await task
        await store.close()


async def test_sqlite_in_memory_refused(field_cipher: FieldCipher) -> None:
    with pytest.raises(ValueError, match="fichier"):
        await Store.open("sqlite+aiosqlite:///:memory:", field_cipher)


async def test_ping(store: Store, field_cipher: FieldCipher) -> None:
    await store.ping()
    dead = Store(create_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none"), field_cipher)
    try:
        with pytest.raises((OSError, DBAPIError)):
            await dead.ping()
    finally:
        await dead.close()


async def test_rollback_on_exception_leaves_nothing(store: Store) -> None:
    aidant, _, g1, _ = await seed(store)
    with pytest.raises(RuntimeError, match="boom"):
        async with store.transaction() as tx:
            await tx.upsert_group(
                name="Éphémère", organisation_id="x", departements=frozenset(), bal=None
            )
            await tx.next_reference(2030)
            await tx.save_draft(
                aidant_agent_id=aidant.id,
                dm_room_id="!dm:t",
                form=make_form(),
                group_ids=[g1],
                now=NOW,
            )
            await tx.mark_processed("$e", "!r:t", NOW)
            await tx.audit("test", actor="bot", now=NOW)
            await tx.set_state("k", "v")
            raise RuntimeError("boom")
    async with store.transaction() as tx:
        assert await tx.get_group_by_name("Éphémère") is None
        assert await tx.last_draft(aidant_agent_id=aidant.id, dm_room_id="!dm:t") is None
        assert not await tx.is_processed("$e")
        assert await tx.audit_entries() == []
        assert await tx.get_state("k") is None
        assert await tx.next_reference(2030) == "A-2030-000001"


async def test_timestamps_are_aware_utc(store: Store) -> None:
    aidant, _, _, _ = await seed(store)
    paris = datetime(2026, 3, 2, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    async with store.transaction() as tx:
        await tx.audit("t", actor="bot", now=paris)
        await tx.enqueue_message(txn_id="t1", room_id="!r:t", content={}, now=paris)
    async with store.transaction() as tx:
        (entry,) = await tx.audit_entries()
        (message,) = await tx.pending_messages()
    for value in (entry.at, message.created_at):
        assert value == paris
        assert value.tzinfo is UTC
        assert value.hour == 9
    with pytest.raises(StatementError, match="naive"):
        async with store.transaction() as tx:
            await tx.audit("t", actor="bot", now=datetime(2026, 1, 1))
    assert aidant.id > 0


# ---------------------------------------------------------------- directory


async def test_groups(store: Store) -> None:
    async with store.transaction() as tx:
        g = await tx.upsert_group(
            name="CAF 75", organisation_id="caf", departements=frozenset({"92", "75"}), bal=None
        )
        assert g.departements == frozenset({"75", "92"})
        same = await tx.upsert_group(
            name="CAF 75",
            organisation_id="caf",
            departements=frozenset({"2A"}),
            bal="bal@caf.fr",
        )
        assert same.id == g.id
        assert same.bal == "bal@caf.fr"
        assert await tx.get_group(g.id) == same
        other = await tx.upsert_group(
            name="CPAM 75", organisation_id="cpam", departements=frozenset(), bal=None
        )
    async with store.transaction() as tx:
        assert await tx.get_group_by_name("CAF 75") == same
        assert await tx.get_group_by_name("caf 75") is None
        assert await tx.get_group(9999) is None
        assert await tx.list_groups() == [same, other]
        assert other.departements == frozenset()
        with pytest.raises(ValueError, match="Département"):
            await tx.upsert_group(
                name="x", organisation_id="x", departements=frozenset({"7,5"}), bal=None
            )
    async with store.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT departements FROM groups WHERE id = 1"))).scalar()
    assert stored == "2A"


async def test_agents(store: Store) -> None:
    aidant, instructeur, g_aidant, g_caf = await seed(store)
    async with store.transaction() as tx:
        assert await tx.get_agent(aidant.id) == aidant
        assert aidant.roles == frozenset({Role.AIDANT})
        assert instructeur.roles == frozenset({Role.INSTRUCTEUR, Role.RESPONSABLE})
        assert await tx.get_agent_by_matrix_id("@alice:aplus.test") == aidant
        assert await tx.get_agent_by_email("IVAN@Caf.Example.FR") == instructeur
        assert await tx.get_agent_by_email("nobody@x.fr") is None
        assert await tx.get_agent(424242) is None

        # Matched by Matrix ID: email and everything else updated, not created.
        updated, created = await tx.upsert_agent(
            first_name="Alice",
            last_name="Martin",
            email="Alice.Martin@FS.example.fr",
            matrix_id="@alice:aplus.test",
            group_id=g_aidant,
            roles=frozenset({Role.AIDANT, Role.RESPONSABLE}),
        )
        assert not created
        assert updated.id == aidant.id
        assert updated.email == "alice.martin@fs.example.fr"
        # Matched by email (any case): gains a Matrix ID.
        ivan, created = await tx.upsert_agent(
            first_name="Ivan",
            last_name="Instructeur",
            email="Ivan@caf.example.fr",
            matrix_id="@ivan:aplus.test",
            group_id=g_caf,
            roles=frozenset({Role.INSTRUCTEUR}),
        )
        assert not created
        assert ivan.id == instructeur.id
        assert ivan.matrix_id == "@ivan:aplus.test"

        with pytest.raises(DirectoryConflict, match="deux agents"):
            await tx.upsert_agent(
                first_name="X",
                last_name="Y",
                email="ivan@caf.example.fr",
                matrix_id="@alice:aplus.test",
                group_id=None,
                roles=frozenset(),
            )
        with pytest.raises(ValueError, match="ni adresse"):
            await tx.upsert_agent(
                first_name="X",
                last_name="Y",
                email=" ",
                matrix_id=None,
                group_id=None,
                roles=frozenset(),
            )
        bob, created = await tx.upsert_agent(
            first_name="Bob",
            last_name="Caf",
            email="bob@caf.example.fr",
            matrix_id=None,
            group_id=g_caf,
            roles=frozenset({Role.INSTRUCTEUR}),
            active=False,
        )
        assert created
        assert not bob.active

        assert [a.id for a in await tx.list_agents()] == [aidant.id, instructeur.id]
        assert [a.id for a in await tx.list_agents(active_only=False)] == [
            aidant.id,
            instructeur.id,
            bob.id,
        ]
        assert [a.id for a in await tx.agents_of_group(g_caf)] == [instructeur.id]
        await tx.set_agent_active(bob.id, True)
        await tx.set_agent_active(instructeur.id, False)
        assert [a.id for a in await tx.agents_of_group(g_caf)] == [bob.id]
        assert [a.id for a in await tx.agents_of_group(g_caf, active_only=False)] == [
            instructeur.id,
            bob.id,
        ]
        with pytest.raises(NotFound):
            await tx.set_agent_active(999, True)


async def test_agent_constraints_in_the_database(store: Store) -> None:
    await seed(store)
    with pytest.raises(IntegrityError):  # neither email nor Matrix ID
        await raw(
            store,
            "INSERT INTO agents (first_name, last_name, roles, active, created_at, updated_at) "
            "VALUES ('a', 'b', '', true, :now, :now)",
            now=NOW,
        )
    with pytest.raises(IntegrityError):  # duplicate email
        await raw(
            store,
            "INSERT INTO agents (first_name, last_name, email, roles, active, created_at,"
            " updated_at) VALUES ('a', 'b', 'ivan@caf.example.fr', '', true, :now, :now)",
            now=NOW,
        )
    with pytest.raises(IntegrityError):  # duplicate group name
        await raw(
            store,
            "INSERT INTO groups (name, organisation_id, departements, created_at) "
            "VALUES ('CAF Paris', 'caf', '', :now)",
            now=NOW,
        )


# ---------------------------------------------------------------- drafts


async def test_drafts_replace_each_other(store: Store) -> None:
    aidant, instructeur, g1, g2 = await seed(store)
    async with store.transaction() as tx:
        assert await tx.pending_draft(aidant_agent_id=aidant.id, dm_room_id="!dm:t") is None
        first = await tx.save_draft(
            aidant_agent_id=aidant.id, dm_room_id="!dm:t", form=make_form(), group_ids=[g2], now=NOW
        )
        assert first.state == "pending"
        assert first.form == make_form()
        assert first.group_ids == (g2,)
        elsewhere = await tx.save_draft(
            aidant_agent_id=aidant.id,
            dm_room_id="!other:t",
            form=make_form(),
            group_ids=[],
            now=NOW,
        )
    later = NOW + timedelta(minutes=5)
    async with store.transaction() as tx:
        second = await tx.save_draft(
            aidant_agent_id=aidant.id,
            dm_room_id="!dm:t",
            form=make_form(nom="Autre"),
            group_ids=[g1, g2],
            now=later,
        )
    async with store.transaction() as tx:
        pending = await tx.pending_draft(aidant_agent_id=aidant.id, dm_room_id="!dm:t")
        assert pending == second
        assert pending.form.usager.nom == "Autre"
        assert pending.group_ids == (g1, g2)
        assert pending.created_at == later
        # The other room's draft is untouched.
        assert await tx.pending_draft(aidant_agent_id=aidant.id, dm_room_id="!other:t") == (
            elsewhere
        )
        assert await tx.pending_draft(aidant_agent_id=instructeur.id, dm_room_id="!dm:t") is None

        await tx.set_draft_state(second.id, "cancelled", now=later)
        assert await tx.pending_draft(aidant_agent_id=aidant.id, dm_room_id="!dm:t") is None
        last = await tx.last_draft(aidant_agent_id=aidant.id, dm_room_id="!dm:t")
        assert last is not None
        assert (last.id, last.state) == (second.id, "cancelled")

        with pytest.raises(ValueError, match="brouillon"):
            await tx.set_draft_state(second.id, "sent", now=later)
        with pytest.raises(NotFound):
            await tx.set_draft_state(9999, "confirmed", now=later)
    async with store.engine.connect() as conn:
        states: dict[int, str] = dict(
            (await conn.execute(text("SELECT id, state FROM drafts ORDER BY id"))).all()
        )
    assert states == {first.id: "cancelled", elsewhere.id: "pending", second.id: "cancelled"}


async def test_draft_confirmed_into_demande(store: Store) -> None:
    aidant, _, _, g2 = await seed(store)
    async with store.transaction() as tx:
        draft = await tx.save_draft(
            aidant_agent_id=aidant.id, dm_room_id="!dm:t", form=make_form(), group_ids=[g2], now=NOW
        )
        demande = await tx.create_demande(
            reference=await tx.next_reference(2026),
            form=draft.form,
            aidant_agent_id=aidant.id,
            group_ids=draft.group_ids,
            draft_id=draft.id,
            now=NOW,
        )
        await tx.set_draft_state(draft.id, "confirmed", demande_id=demande.id, now=NOW)
    async with store.transaction() as tx:
        last = await tx.last_draft(aidant_agent_id=aidant.id, dm_room_id="!dm:t")
        assert last is not None
        assert (last.state, last.demande_id) == ("confirmed", demande.id)
        assert (await tx.get_demande(demande.id)).draft_id == draft.id  # type: ignore[union-attr]
    # One draft opens at most one demande.
    with pytest.raises(IntegrityError):
        async with store.transaction() as tx:
            await tx.create_demande(
                reference="A-2026-999999",
                form=make_form(),
                aidant_agent_id=aidant.id,
                group_ids=[],
                draft_id=draft.id,
                now=NOW,
            )


# ---------------------------------------------------------------- demandes


async def test_reference_sequence(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.next_reference(2026) == "A-2026-000001"
        assert await tx.next_reference(2026) == "A-2026-000002"
        assert await tx.next_reference(2027) == "A-2027-000001"
    async with store.transaction() as tx:
        assert await tx.next_reference(2026) == "A-2026-000003"


async def test_concurrent_references_are_distinct(store: Store) -> None:
    async def allocate() -> str:
        async with store.transaction() as tx:
            reference = await tx.next_reference(2026)
            await asyncio.sleep(0.01)  # hold the transaction open while others queue
            return reference

    references = await asyncio.gather(*(allocate() for _ in range(20)))
    assert len(set(references)) == 20
    assert sorted(references) == [f"A-2026-{n:06d}" for n in range(1, 21)]


async def test_demande_lifecycle(store: Store) -> None:
    aidant, _, g1, g2 = await seed(store)
    async with store.transaction() as tx:
        record = await tx.create_demande(
            reference="A-2026-000042",
            form=make_form(),
            aidant_agent_id=aidant.id,
            group_ids=[g2, g1, g2],
            draft_id=None,
            now=NOW,
        )
    assert record.reference == "A-2026-000042"
    assert record.territoire == "75"
    assert record.organisations == ("caf", "cpam")
    assert record.categorie == "rsa"
    assert record.status is Status.NOUVELLE
    assert record.times == StatusTimes(created_at=NOW)
    assert record.usefulness is None
    assert record.creation_step == "pending"
    assert record.room_id is None
    assert record.group_ids == (g1, g2)
    assert not hasattr(record, "form")

    async with store.transaction() as tx:
        assert await tx.get_demande(record.id) == record
        assert await tx.get_demande_by_reference("A-2026-000042") == record
        assert await tx.get_demande(999) is None
        assert await tx.get_demande_by_room("!room:t") is None
        assert await tx.demandes_in_creation() == [record]
        assert await tx.known_room_ids() == set()
        assert await tx.load_form(record.id) == make_form()

        await tx.set_creation_step(record.id, "room_created", room_id="!room:t")
        await tx.set_creation_step(record.id, "invited")
        await tx.set_creation_step(record.id, "ready", dossier_event_id="$dossier")
        with pytest.raises(ValueError, match="Étape"):
            await tx.set_creation_step(record.id, "done")
        with pytest.raises(NotFound):
            await tx.set_creation_step(999, "ready")
        with pytest.raises(NotFound):
            await tx.load_form(999)

    async with store.transaction() as tx:
        ready = await tx.get_demande_by_room("!room:t")
        assert ready is not None
        assert (ready.creation_step, ready.room_id, ready.dossier_event_id) == (
            "ready",
            "!room:t",
            "$dossier",
        )
        assert await tx.demandes_in_creation() == []
        assert await tx.known_room_ids() == {"!room:t"}

        times = StatusTimes(
            created_at=NOW,
            first_answer_at=NOW + timedelta(hours=1),
            last_answer_at=NOW + timedelta(hours=2),
            treated_at=NOW + timedelta(hours=3),
        )
        await tx.update_status(record.id, Status.TRAITEE, times, usefulness=Usefulness.UTILE)
        closed = dataclasses.replace(times, closed_at=NOW + timedelta(days=1))
        await tx.update_status(record.id, Status.CLOTUREE, closed)  # usefulness kept
        with pytest.raises(NotFound):
            await tx.update_status(999, Status.CLOTUREE, closed)

    async with store.transaction() as tx:
        done = await tx.get_demande(record.id)
        assert done is not None
        assert done.status is Status.CLOTUREE
        assert done.times == closed
        assert done.usefulness is Usefulness.UTILE
        assert await tx.list_demandes(status=Status.CLOTUREE) == [done]
        assert await tx.list_demandes(status=Status.NOUVELLE) == []
        assert await tx.list_demandes() == [done]

    with pytest.raises(IntegrityError):  # references are unique
        async with store.transaction() as tx:
            await tx.create_demande(
                reference="A-2026-000042",
                form=make_form(),
                aidant_agent_id=aidant.id,
                group_ids=[],
                draft_id=None,
                now=NOW,
            )
    other = await new_demande(store, aidant, [])
    with pytest.raises(IntegrityError):  # one room, one demande
        async with store.transaction() as tx:
            await tx.set_creation_step(other, "room_created", room_id="!room:t")


async def test_ciphertext_cannot_move_between_rows(store: Store) -> None:
    aidant, _, _, _ = await seed(store)
    first = await new_demande(store, aidant, [])
    second = await new_demande(store, aidant, [], nom="Autre")
    await raw(
        store,
        "UPDATE demandes SET dossier_enc = (SELECT dossier_enc FROM demandes WHERE id = :first) "
        "WHERE id = :second",
        first=first,
        second=second,
    )
    async with store.transaction() as tx:
        assert (await tx.load_form(first)).usager.nom == NOM
        with pytest.raises(TamperedDataError):
            await tx.load_form(second)


async def test_other_key_cannot_read(store_url: str) -> None:
    store = await Store.open(store_url, FieldCipher.from_secret(generate_key()))
    try:
        aidant, _, _, _ = await seed(store)
        demande = await new_demande(store, aidant, [])
    finally:
        await store.close()
    stranger = await Store.open(store_url, FieldCipher.from_secret(generate_key()))
    try:
        async with stranger.transaction() as tx:
            assert (await tx.get_demande(demande)) is not None  # metadata stays readable
            with pytest.raises(UnknownKeyError, match="clé inconnue"):
                await tx.load_form(demande)
    finally:
        await stranger.close()


# ---------------------------------------------------------------- participants


async def test_participants(store: Store) -> None:
    aidant, instructeur, _, g_caf = await seed(store)
    d1 = await new_demande(store, aidant, [g_caf])
    d2 = await new_demande(store, aidant, [g_caf])
    async with store.transaction() as tx:
        assert await tx.add_participant(
            demande_id=d1, agent=aidant, kind="aidant", added_by="bot", now=NOW
        )
        assert await tx.add_participant(
            demande_id=d1, agent=instructeur, kind="instructeur", added_by="bot", now=NOW
        )
        assert not await tx.add_participant(
            demande_id=d1, agent=instructeur, kind="instructeur", added_by="bot", now=NOW
        )
        with pytest.raises(ValueError, match="participant"):
            await tx.add_participant(
                demande_id=d1, agent=instructeur, kind="spectateur", added_by="bot", now=NOW
            )
        active = await tx.participants(d1)
        assert [(p.agent_id, p.kind, p.active) for p in active] == [
            (aidant.id, "aidant", True),
            (instructeur.id, "instructeur", True),
        ]
        assert active[1].email == "ivan@caf.example.fr"
        assert active[1].matrix_id is None
        assert active[1].group_id == g_caf
        assert [d.id for d in await tx.demandes_of_agent(instructeur.id)] == [d1]
        assert [d.id for d in await tx.demandes_of_agent(aidant.id)] == [d1, d2]

        later = NOW + timedelta(hours=1)
        assert await tx.remove_participant(demande_id=d1, agent_id=instructeur.id, now=later)
        assert not await tx.remove_participant(demande_id=d1, agent_id=instructeur.id, now=later)
        assert not await tx.remove_participant(demande_id=d2, agent_id=instructeur.id, now=later)
        assert [p.agent_id for p in await tx.participants(d1)] == [aidant.id]
        everyone = await tx.participants(d1, active_only=False)
        assert [(p.agent_id, p.active) for p in everyone] == [
            (aidant.id, True),
            (instructeur.id, False),
        ]
        assert await tx.demandes_of_agent(instructeur.id) == []

        # Re-activated as an invité, on the same ledger line.
        assert await tx.add_participant(
            demande_id=d1, agent=instructeur, kind="invite", added_by="@alice:aplus.test", now=later
        )
        again = await tx.participants(d1)
        assert [(p.agent_id, p.kind, p.active) for p in again] == [
            (aidant.id, "aidant", True),
            (instructeur.id, "invite", True),
        ]
        assert [d.id for d in await tx.demandes_of_agent(instructeur.id)] == [d1]
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*), max(added_by) FROM participants "
                    "WHERE demande_id = :d AND agent_id = :a"
                ),
                {"d": d1, "a": instructeur.id},
            )
        ).one()
    assert tuple(row) == (1, "@alice:aplus.test")


# ---------------------------------------------------------------- idempotency and outbox


async def test_mark_processed_is_idempotent(store: Store) -> None:
    async with store.transaction() as tx:
        assert not await tx.is_processed("$a")
        assert await tx.mark_processed("$a", "!r:t", NOW)
        assert not await tx.mark_processed("$a", "!r:t", NOW)  # same transaction
        assert await tx.is_processed("$a")
    async with store.transaction() as tx:
        assert not await tx.mark_processed("$a", "!r:t", NOW)  # later transaction
        # A duplicate must not poison the transaction (PostgreSQL aborts on errors).
        await tx.set_state("after-duplicate", "ok")
        assert await tx.mark_processed("$b", "!r:t", NOW)
    async with store.transaction() as tx:
        assert await tx.get_state("after-duplicate") == "ok"
        assert await tx.is_processed("$b")


async def test_outbox(store: Store) -> None:
    content = {"msgtype": "m.text", "body": "Dossier de Gwendoline", "n": [1, {"x": None}]}
    async with store.transaction() as tx:
        assert await tx.enqueue_message(txn_id="t2", room_id="!b:t", content={"b": 1}, now=NOW)
        assert await tx.enqueue_message(
            txn_id="t1", room_id="!a:t", content=content, now=NOW - timedelta(seconds=1)
        )
        assert await tx.enqueue_message(txn_id="t3", room_id="!a:t", content={}, now=NOW)
        assert not await tx.enqueue_message(txn_id="t1", room_id="!a:t", content={}, now=NOW)
        await tx.set_state("after-duplicate", "ok")
    async with store.transaction() as tx:
        assert await tx.get_state("after-duplicate") == "ok"
        pending = await tx.pending_messages()
        assert [m.txn_id for m in pending] == ["t1", "t2", "t3"]
        assert pending[0].content == content
        assert pending[0].room_id == "!a:t"
        assert pending[0].attempts == 0
        assert pending[0].created_at == NOW - timedelta(seconds=1)
        assert [m.txn_id for m in await tx.pending_messages("!a:t")] == ["t1", "t3"]

        assert await tx.record_send_attempt("t1") == 1
        assert await tx.record_send_attempt("t1") == 2
        with pytest.raises(NotFound):
            await tx.record_send_attempt("nope")
        assert await tx.message_event_id("t1") is None
        await tx.mark_message_sent("t1", "$sent1", NOW)
        await tx.mark_message_sent("t1", "$other", NOW)  # first event ID wins
        with pytest.raises(NotFound):
            await tx.mark_message_sent("nope", "$x", NOW)
    async with store.transaction() as tx:
        assert await tx.message_event_id("t1") == "$sent1"
        assert await tx.message_event_id("nope") is None
        assert [m.txn_id for m in await tx.pending_messages("!a:t")] == ["t3"]
        (t2,) = await tx.pending_messages("!b:t")
        assert t2.content == {"b": 1}
        # Once sent, the txn ID stays taken.
        assert not await tx.enqueue_message(txn_id="t1", room_id="!a:t", content={}, now=NOW)


async def test_room_offences(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.offences("!r:t") == {}
        assert await tx.record_offence("!r:t", "@eve:t", NOW) == 1
        assert await tx.record_offence("!r:t", "@eve:t", NOW) == 2
        assert await tx.record_offence("!r:t", "@mallory:t", NOW) == 1
        assert await tx.record_offence("!other:t", "@eve:t", NOW) == 1
    async with store.transaction() as tx:
        assert await tx.record_offence("!r:t", "@eve:t", NOW) == 3
        assert await tx.offences("!r:t") == {"@eve:t": 3, "@mallory:t": 1}


# ---------------------------------------------------------------- audit


async def test_audit_entries(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.audit(
            "demande.created",
            actor="@alice:aplus.test",
            reference="A-2026-000001",
            details={"groups": [1, 2], "via": "dm"},
            now=NOW,
        )
        await tx.audit("room.kick", actor="bot", reference="A-2026-000001", now=NOW)
        await tx.audit("directory.import", actor="cli", now=NOW)
    async with store.transaction() as tx:
        entries = await tx.audit_entries()
        assert [e.action for e in entries] == ["demande.created", "room.kick", "directory.import"]
        assert entries[0].details == {"groups": [1, 2], "via": "dm"}
        assert entries[0].actor == "@alice:aplus.test"
        assert entries[0].at == NOW
        assert entries[2].details == {}
        assert entries[2].reference is None
        by_ref = await tx.audit_entries(reference="A-2026-000001")
        assert [e.action for e in by_ref] == ["demande.created", "room.kick"]
        assert [e.id for e in await tx.audit_entries(action="room.kick")] == [entries[1].id]
        assert await tx.audit_entries(reference="A-2026-000001", action="directory.import") == []
    assert not hasattr(store, "delete_audit")


@pytest.mark.parametrize(
    "sql",
    ["UPDATE audit SET actor = 'forged'", "DELETE FROM audit"],
    ids=["update", "delete"],
)
async def test_audit_is_append_only_in_the_database(store: Store, sql: str) -> None:
    async with store.transaction() as tx:
        await tx.audit("x", actor="bot", now=NOW)
    with pytest.raises(DBAPIError, match="append-only"):
        await raw(store, sql)
    if store.dialect == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            await raw(store, "TRUNCATE audit")
    async with store.transaction() as tx:
        (entry,) = await tx.audit_entries()
        assert entry.actor == "bot"


# ---------------------------------------------------------------- state and secrets


async def test_state_and_secrets(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.get_state("sync_token") is None
        await tx.set_state("sync_token", "s1")
        await tx.set_state("sync_token", "s2")
        assert await tx.get_secret("pickle_key") is None
        await tx.set_secret("pickle_key", b"\x00first")
        await tx.set_secret("pickle_key", b"\x00second")
        await tx.set_secret("ssk", b"signing")
    async with store.transaction() as tx:
        assert await tx.get_state("sync_token") == "s2"
        assert await tx.get_secret("pickle_key") == b"\x00second"
        assert await tx.get_secret("ssk") == b"signing"
    # A secret's ciphertext is bound to its key name.
    await raw(
        store,
        "UPDATE bot_secrets SET value_enc = "
        "(SELECT value_enc FROM bot_secrets WHERE key = 'pickle_key') WHERE key = 'ssk'",
    )
    async with store.transaction() as tx:
        with pytest.raises(TamperedDataError):
            await tx.get_secret("ssk")


# ---------------------------------------------------------------- nothing in clear


async def test_usager_data_never_stored_in_clear(store: Store, store_url: str) -> None:
    aidant, instructeur, _, g_caf = await seed(store)
    form = make_form()
    async with store.transaction() as tx:
        draft = await tx.save_draft(
            aidant_agent_id=aidant.id, dm_room_id="!dm:t", form=form, group_ids=[g_caf], now=NOW
        )
        demande = await tx.create_demande(
            reference=await tx.next_reference(2026),
            form=form,
            aidant_agent_id=aidant.id,
            group_ids=[g_caf],
            draft_id=draft.id,
            now=NOW,
        )
        await tx.add_participant(
            demande_id=demande.id, agent=instructeur, kind="instructeur", added_by="bot", now=NOW
        )
        dossier_body = f"{PRENOM} {NOM}, NIR {NIR}: {DESCRIPTION} ({OBJET})"
        await tx.enqueue_message(
            txn_id="dossier-1", room_id="!room:t", content={"body": dossier_body}, now=NOW
        )
        await tx.set_secret("usager-test", NIR.encode())
        await tx.audit("demande.created", actor="bot", reference=demande.reference, now=NOW)
    async with store.transaction() as tx:  # sanity: the data really is there, encrypted
        assert (await tx.load_form(demande.id)).usager.nir == NIR

    needles = [s.encode("utf-8") for s in SECRETS_IN_CLEAR]
    if store.dialect == "sqlite":
        await store.close()  # checkpoint, then read every file SQLite may have written
        db_path = Path(make_url(store_url).database or "")
        files = sorted(db_path.parent.glob(db_path.name + "*"))
        assert db_path in files
        dump = b"".join(f.read_bytes() for f in files)
        assert b"A-2026-000001" in dump  # the dump is real: metadata is in clear
    else:
        dump = await _postgres_dump(store)
        assert b"A-2026-000001" in dump
    # UTF-8 and, for bytea rendered as hex, the hex of the UTF-8 (and UTF-16 for luck).
    for needle in needles:
        for form_of_needle in (needle, needle.hex().encode(), needle.decode().encode("utf-16-le")):
            assert form_of_needle not in dump, needle


async def _postgres_dump(store: Store) -> bytes:
    async with store.engine.connect() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                )
            )
        ).scalars()
        chunks: list[str] = []
        names = list(tables)
        assert {"demandes", "drafts", "outbox_messages", "bot_secrets", "audit"} <= set(names)
        for name in names:
            # A whole row cast to text covers every column, bytea included (as hex).
            # Names come from the catalogue, not from input.
            rows = await conn.execute(text(f'SELECT t::text FROM "{name}" t'))  # noqa: S608
            chunks.extend(r for (r,) in rows)
    return "\n".join(chunks).encode("utf-8")


async def test_migration_0005_moves_the_json_queues_into_their_tables(store_url: str) -> None:
    """The guard's rooms and the pending invitations were JSON rows in bot_state."""

    def upgrade_to(conn: Connection, revision: str) -> None:
        from alembic import command

        from bot.store.db import alembic_config

        command.upgrade(alembic_config(conn), revision)

    engine = create_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to, "0004")
            await conn.execute(
                text("INSERT INTO bot_state (key, value) VALUES (:k, :v)"),
                [
                    {"k": "guard.pending_rooms", "v": '["!a:hs", "!b:hs"]'},
                    {"k": "invites.pending", "v": '["!a:hs @x:hs"]'},
                    {"k": "other", "v": "kept"},
                ],
            )
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to, "head")
            guard = (await conn.execute(text("SELECT room_id FROM guard_pending"))).all()
            invites = (
                await conn.execute(text("SELECT room_id, user_id FROM pending_invites"))
            ).all()
            state = (await conn.execute(text("SELECT key FROM bot_state"))).all()
        assert sorted(r[0] for r in guard) == ["!a:hs", "!b:hs"]
        assert [tuple(r) for r in invites] == [("!a:hs", "@x:hs")]
        assert [r[0] for r in state] == ["other"]
    finally:
        await engine.dispose()


async def test_commit_hooks_run_after_the_outer_commit_only(store: Store) -> None:
    """A worker woken when a savepoint (a command) is released, before the real commit,
    looks too early on PostgreSQL and finds nothing: it then sleeps until its idle
    timeout (a queued invitation went out a minute late)."""
    calls: list[str] = []
    async with store.transaction() as tx:
        async with tx.savepoint():
            tx.after_commit(lambda: calls.append("kept"))
        assert calls == []  # the savepoint is released; the transaction is still open
        with contextlib.suppress(RuntimeError):
            async with tx.savepoint():
                tx.after_commit(lambda: calls.append("rolled back"))
                raise RuntimeError("the command failed half-way")
        assert calls == []
    assert calls == ["kept"]
    with contextlib.suppress(RuntimeError):
        async with store.transaction() as tx:
            tx.after_commit(lambda: calls.append("never"))
            raise RuntimeError("rolled back")
    assert calls == ["kept"]
