"""Searching the directory: every typed word begins a word of what is known."""

from __future__ import annotations

from bot.domain.directory_search import agent_matches, group_matches, search_words, unquoted
from bot.domain.model import Agent, Group, Role

GROUP = Group(1, "CAF du Val-d'Oise", "caf", frozenset({"95"}), "bal@caf95.fr")
SOPHIE = Agent(
    id=7,
    first_name="Sophie",
    last_name="Dupont-Lefèvre",
    email="sophie.dupont@caf95.fr",
    matrix_id="@sdupont:agent.tchap.gouv.fr",
    group_id=1,
    roles=frozenset({Role.INSTRUCTEUR}),
)


def test_agents_are_found_by_name_email_matrix_id_and_group() -> None:
    for typed in (
        "dup",
        "lefevre sophie",
        "SOPHIE.DUPONT@caf95.fr",
        "@sdupont:agent.tchap.gouv.fr",
        "val d'oise",
        "« CAF du Val-d'Oise »",
    ):
        assert agent_matches(SOPHIE, GROUP, search_words(unquoted(typed))), typed
    for typed in ("pont", "sophie martin", "caf93"):
        assert not agent_matches(SOPHIE, GROUP, search_words(typed)), typed
    assert agent_matches(SOPHIE, None, search_words("sophie"))
    assert not agent_matches(SOPHIE, None, search_words("oise"))


def test_groups_are_found_by_name_organisation_and_departement() -> None:
    assert group_matches(GROUP, "CAF", search_words("val 95"))
    assert group_matches(GROUP, "CAF", search_words("bal@caf95"))
    assert not group_matches(GROUP, "CAF", search_words("93"))


def test_unquoted() -> None:
    assert unquoted(' "CAF  Nationale 123" ') == "CAF Nationale 123"
    assert unquoted("« CAF »") == "CAF"
