"""The onboarding tables (migration 0015), on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from bot.domain.model import Role
from bot.domain.scope import OperatorScope, OutOfScope
from bot.store import Store
from bot.store.db import alembic_config, create_engine

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


async def _agent(store: Store, email: str, matrix_id: str | None = None) -> int:
    async with store.transaction() as tx:
        agent, _ = await tx.upsert_agent(
            first_name="A",
            last_name="B",
            email=email,
            matrix_id=matrix_id,
            group_id=None,
            roles=frozenset({Role.INSTRUCTEUR}),
        )
    return agent.id


async def test_welcomes_once_per_channel_until_forgotten(store: Store) -> None:
    agent = await _agent(store, "w@example.test")
    async with store.transaction() as tx:
        assert await tx.welcomed_channels(agent) == set()
        assert await tx.mark_welcomed(agent, "email", NOW)
        assert not await tx.mark_welcomed(agent, "email", NOW)
        assert await tx.mark_welcomed(agent, "matrix", NOW)
        assert await tx.welcomed_channels(agent) == {"email", "matrix"}
        await tx.forget_welcomes(agent)
        assert await tx.welcomed_channels(agent) == set()


async def test_activity_and_warnings(store: Store) -> None:
    agent = await _agent(store, "act@example.test")
    async with store.transaction() as tx:
        last, warned = (await tx.last_activity())[agent]
        assert last.tzinfo is not None and warned is None  # their creation, aware
        await tx.mark_inactivity_warned(agent, last, NOW)
        assert (await tx.last_activity())[agent] == (last, NOW)
        later = NOW + timedelta(days=3)
        await tx.touch_activity(agent, later)
        assert (await tx.last_activity())[agent] == (later, None)  # acting voids the warning
        await tx.set_agent_active(agent, False)
        assert agent not in await tx.last_activity()


async def test_operator_scopes(store: Store) -> None:
    agent = await _agent(store, "op@example.test")
    async with store.transaction() as tx:
        assert await tx.operator_scope(agent) is None  # national
        await tx.set_operator_scope(agent, ["95", "78"])
        assert await tx.operator_scope(agent) == frozenset({"78", "95"})
        await tx.set_operator_scope(agent, None)
        assert await tx.operator_scope(agent) is None


async def test_migration_0015_counts_the_agents_already_there_as_welcomed(store_url: str) -> None:
    def upgrade_to(conn: Connection, revision: str) -> None:
        from alembic import command

        from bot.store.db import alembic_config

        command.upgrade(alembic_config(conn), revision)

    # The revision just before this one, whatever the chain becomes when it is merged.
    previous = ScriptDirectory.from_config(alembic_config()).get_revision("0015_onboarding")
    assert previous is not None and isinstance(previous.down_revision, str)
    engine = create_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to, previous.down_revision)
            await conn.execute(
                text(
                    "INSERT INTO agents (first_name, last_name, email, matrix_id, roles, active,"
                    " created_at, updated_at) VALUES ('A', 'B', :e, :m, 'instructeur', true,"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                [{"e": "old-mail@example.test", "m": None}, {"e": None, "m": "@old:hs"}],
            )
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to, "head")
            rows = (
                await conn.execute(
                    text(
                        "SELECT a.email, a.matrix_id, w.channel FROM agent_welcomes w "
                        "JOIN agents a ON a.id = w.agent_id ORDER BY w.channel"
                    )
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            ("old-mail@example.test", None, "email"),
            (None, "@old:hs", "matrix"),
        ]
    finally:
        await engine.dispose()


async def test_a_territorial_store_hides_and_refuses_what_is_not_theirs(store: Store) -> None:
    async with store.transaction() as tx:
        g95 = await tx.upsert_group(
            name="CAF 95", organisation_id="caf", departements=frozenset({"95"}), bal=None
        )
        g78 = await tx.upsert_group(
            name="CAF 78", organisation_id="caf", departements=frozenset({"78"}), bal=None
        )
        both = await tx.upsert_group(
            name="CAF 78-95", organisation_id="caf", departements=frozenset({"78", "95"}), bal=None
        )
        a95, _ = await tx.upsert_agent(
            first_name="A", last_name="95", email="a95@example.test", matrix_id=None,
            group_id=g95.id, roles=frozenset({Role.INSTRUCTEUR}),
        )  # fmt: skip
        a78, _ = await tx.upsert_agent(
            first_name="A", last_name="78", email="a78@example.test", matrix_id=None,
            group_id=g78.id, roles=frozenset({Role.INSTRUCTEUR}),
        )  # fmt: skip
    scoped = store.scoped(OperatorScope.of(["95"]))
    assert store.scoped(OperatorScope.of(None)) is store
    async with scoped.transaction() as tx:
        assert [g.id for g in await tx.list_groups()] == [g95.id]  # 78-95 is not all theirs
        assert await tx.get_group(both.id) is None and await tx.get_group_by_name("CAF 78") is None
        assert [a.id for a in await tx.list_agents()] == [a95.id]
        assert await tx.get_agent(a78.id) is None
        assert await tx.get_agent_by_email("a78@example.test") is None
        assert await tx.agents_of_group(g78.id) == []
        await tx.audit("probe", actor="@op:hs", details={"x": 1}, now=NOW)
    for change in (
        lambda tx: tx.set_agent_active(a78.id, False),
        lambda tx: tx.upsert_group(
            name="New 78", organisation_id="caf", departements=frozenset({"78"}), bal=None
        ),
        lambda tx: tx.upsert_agent(
            first_name="B", last_name="78", email="a78@example.test", matrix_id=None,
            group_id=g95.id, roles=frozenset({Role.INSTRUCTEUR}),
        ),  # an agent of the 78 moved into their group
        lambda tx: tx.update_group(
            g95.id, name="CAF 95", organisation_id="caf",
            departements=frozenset({"78", "95"}), bal=None,
        ),  # their group stretched to another département
    ):  # fmt: skip
        with pytest.raises(OutOfScope):
            async with scoped.transaction() as tx:
                await change(tx)
    async with store.transaction() as tx:
        moved = await tx.get_agent(a78.id)
        assert moved is not None and moved.active and moved.group_id == g78.id
        kept = await tx.get_group(g95.id)
        assert kept is not None and kept.departements == frozenset({"95"})
        (probe,) = await tx.audit_entries(action="probe")
        assert probe.details == {"x": 1, "scope": "95"}
