"""A directory CSV import follows the ledger rules of `!agent-modifier` and
`!agent-reactiver` (SQLite and PostgreSQL): a contact change of an agent who takes part
in demandes is refused with its line, nothing imported; an import never reactivates a
deactivated agent; two lines naming one agent are refused."""

from __future__ import annotations

from pathlib import Path

from bot.domain.model import Agent, Role
from bot.policy_loader import load_policies
from bot.services.directory import import_directory_text
from bot.store import Store
from tests.integration.test_store import NOW, new_demande

POLICIES = load_policies(Path(__file__).resolve().parents[2] / "policies")
HEADER = "Prénom;Nom;Email;Matrix;Instructeur;Responsable;Territoire;Organisation;Groupe;BAL\n"
GROUP = "CAF Import 95"


def line(first: str, email: str, matrix_id: str = "") -> str:
    return f"{first};Test;{email};{matrix_id};oui;non;95;CAF;{GROUP};\n"


async def _world(store: Store) -> tuple[Agent, Agent, Agent, int]:
    """Sophie takes part in a demande; Marc did too, then was deactivated; Nour is new."""
    async with store.transaction() as tx:
        group = await tx.upsert_group(
            name=GROUP, organisation_id="caf", departements=frozenset({"95"}), bal=None
        )
        fs = await tx.upsert_group(
            name="FS 95", organisation_id="france_services", departements=frozenset(), bal=None
        )
        aidant, _ = await tx.upsert_agent(
            first_name="Ali", last_name="Test", email="ali@fs.test", matrix_id="@ali:hs.test",
            group_id=fs.id, roles=frozenset({Role.AIDANT}),
        )  # fmt: skip
        agents = []
        for first in ("sophie", "marc", "nour"):
            agent, _ = await tx.upsert_agent(
                first_name=first.capitalize(), last_name="Test", email=f"{first}@caf.test",
                matrix_id=f"@{first}:hs.test", group_id=group.id,
                roles=frozenset({Role.INSTRUCTEUR}),
            )  # fmt: skip
            agents.append(agent)
    sophie, marc, nour = agents
    demande_id = await new_demande(store, aidant, [group.id])
    async with store.transaction() as tx:
        for agent in (aidant, sophie, marc):
            await tx.add_participant(
                demande_id=demande_id, agent=agent, kind="instructeur", added_by="test", now=NOW
            )
        await tx.remove_participant(demande_id=demande_id, agent_id=marc.id, now=NOW)
        await tx.set_agent_active(marc.id, False)
    return sophie, marc, nour, demande_id


async def _import(store: Store, text: str) -> tuple[bool, str]:
    report = await import_directory_text(
        store, HEADER + text, POLICIES, actor="@op:hs.test", now=NOW, own_server="hs.test"
    )
    return report.ok, report.text


async def test_a_contact_change_of_a_participant_is_refused_line_by_line(store: Store) -> None:
    sophie, _, _, demande_id = await _world(store)
    ok, text = await _import(
        store,
        line("Nour", "nour@caf.test", "@nour:hs.test")
        + line("Sophie", "sophie@caf.test", "@sophie.petit:hs.test"),
    )
    assert not ok, text
    assert "ligne 3" in text and "@sophie:hs.test" in text and "!agent-desactiver" in text
    assert "ligne 2" not in text
    async with store.transaction() as tx:
        assert (await tx.get_agent(sophie.id)).matrix_id == "@sophie:hs.test"  # type: ignore[union-attr]
        assert await tx.get_agent_by_matrix_id("@sophie.petit:hs.test") is None
        ledger = {p.matrix_id for p in await tx.participants(demande_id)}
        refused = await tx.audit_entries(action="directory_import_refused")
        assert await tx.audit_entries(action="directory_imported") == []
    assert ledger == {"@ali:hs.test", "@sophie:hs.test"}
    assert refused and refused[-1].details.get("lines") == [3]

    # Her email, too, is a contact the ledger knows her by.
    ok, text = await _import(store, line("Sophie", "sophie.petit@caf.test", "@sophie:hs.test"))
    assert not ok and "ligne 2" in text and "sophie@caf.test" in text


async def test_the_import_never_reactivates_a_deactivated_agent(store: Store) -> None:
    _, marc, _, demande_id = await _world(store)
    ok, text = await _import(store, line("Marc", "marc@caf.test", "@marc:hs.test"))
    assert ok, text
    assert "désactivé" in text and "!agent-reactiver" in text
    async with store.transaction() as tx:
        assert not (await tx.get_agent(marc.id)).active  # type: ignore[union-attr]
        assert await tx.audit_entries(action="agent_reactivated") == []
        assert "@marc:hs.test" not in {p.matrix_id for p in await tx.participants(demande_id)}


async def test_a_contact_change_without_participation_is_applied_and_audited(
    store: Store,
) -> None:
    _, marc, nour, _ = await _world(store)
    # Nour takes part in nothing; Marc left his demande when he was deactivated.
    ok, text = await _import(
        store,
        line("Nour", "nour@caf.test", "@nour.b:hs.test")
        + line("Marc", "marc.b@caf.test", "@marc:hs.test"),
    )
    assert ok, text
    async with store.transaction() as tx:
        assert (await tx.get_agent(nour.id)).matrix_id == "@nour.b:hs.test"  # type: ignore[union-attr]
        marc_now = await tx.get_agent(marc.id)
        changed = [e.details for e in await tx.audit_entries(action="agent_changed")]
    assert marc_now is not None and marc_now.email == "marc.b@caf.test" and not marc_now.active
    assert {(d["agent"], d["field"]) for d in changed} == {(nour.id, "matrix"), (marc.id, "email")}


async def test_two_lines_for_one_agent_or_two_agents_on_one_line_are_refused(
    store: Store,
) -> None:
    _, _, nour, _ = await _world(store)
    ok, text = await _import(
        store,
        line("Nour", "nour@caf.test", "")  # found by email: n° of Nour
        + line("Nour", "nour.bis@caf.test", "@nour:hs.test"),  # found by Matrix ID: Nour again
    )
    assert not ok and "ligne 3" in text and "ligne 2" in text, text
    ok, text = await _import(store, line("Nour", "nour@caf.test", "@marc:hs.test"))
    assert not ok and "ligne 2" in text and "deux agents" in text, text
    async with store.transaction() as tx:
        assert (await tx.get_agent(nour.id)).email == "nour@caf.test"  # type: ignore[union-attr]


async def test_an_export_without_matrix_column_or_with_empty_cells_keeps_the_contacts(
    store: Store,
) -> None:
    """Administration+ exports have no Matrix column: re-importing one erases nothing."""
    sophie, _, nour, demande_id = await _world(store)
    header = "Prénom;Nom;Email;Instructeur;Responsable;Territoire;Organisation;Groupe;BAL\n"
    report = await import_directory_text(
        store,
        header + f"Sophie;Petit;sophie@caf.test;oui;oui;95;CAF;{GROUP};\n",
        POLICIES,
        actor="@op:hs.test",
        now=NOW,
        own_server="hs.test",
    )
    assert report.ok, report.text
    ok, text = await _import(store, line("Nour", "", "@nour:hs.test"))
    assert ok, text
    async with store.transaction() as tx:
        now_sophie = await tx.get_agent(sophie.id)
        now_nour = await tx.get_agent(nour.id)
        ledger = {p.matrix_id for p in await tx.participants(demande_id)}
        assert await tx.audit_entries(action="agent_changed") == []
    assert now_sophie is not None and now_sophie.matrix_id == "@sophie:hs.test"
    assert now_sophie.last_name == "Petit" and Role.RESPONSABLE in now_sophie.roles
    assert now_nour is not None and now_nour.email == "nour@caf.test"
    assert "@sophie:hs.test" in ledger
