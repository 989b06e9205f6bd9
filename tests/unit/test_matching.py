"""Finding a group or a colleague as an agent types it (`!inviter`)."""

from __future__ import annotations

from bot.domain import matching
from bot.domain.model import Agent, Group, Role
from bot.domain.policies import fold

GROUPS = [
    Group(1, "CAF 95 - Cergy", "caf", frozenset({"95"})),
    Group(2, "CPAM du Val-d'Oise", "cpam", frozenset({"95"})),
    Group(3, "CPAM de Paris", "cpam", frozenset({"75"})),
    Group(4, "MSA Île-de-France", "msa", frozenset({"75", "95"})),
    Group(5, "CAF de Paris", "caf", frozenset({"75"})),
    Group(6, "DGFiP 95 Pontoise", "dgfip", frozenset({"95"})),
]
ORGS = {"caf": "caf", "cpam": "cpam", "msa": "msa", "dgfip": "dgfip"}
DEPS = {"95": "Val-d'Oise", "75": "Paris"}


def organisation_of(text: str) -> str | None:
    return ORGS.get(fold(text))


def departement_of(text: str) -> str | None:
    if text.strip().upper() in DEPS:
        return text.strip().upper()
    return next((c for c, n in DEPS.items() if fold(n) == fold(text)), None)


def find(text: str, territoire: str = "95") -> matching.Found | matching.NotFound:
    return matching.find_group(
        text,
        GROUPS,
        territoire=territoire,
        organisation_of=organisation_of,
        departement_of=departement_of,
    )


def ids(result: matching.Found | matching.NotFound) -> list[int]:
    groups = result.groups if isinstance(result, matching.Found) else result.suggestions
    return [g.id for g in groups]


def test_name_ignoring_case_accents_and_spacing() -> None:
    assert isinstance(find("caf 95 - cergy"), matching.Found)
    assert ids(find("CAF95-CERGY")) == [1]
    assert ids(find("msa ile de france")) == [4]
    assert ids(find("  cpam  du val d'oise ")) == [2]


def test_organisation_and_departement() -> None:
    assert ids(find("CPAM 95")) == [2]
    assert ids(find("cpam val d'oise")) == [2]
    assert ids(find("CPAM Paris")) == [3]
    assert ids(find("la CPAM du 95")) == [2]
    assert ids(find("MSA 75")) == [4]


def test_organisation_alone_means_the_demande_s_departement() -> None:
    assert ids(find("cpam")) == [2]
    assert ids(find("cpam", territoire="75")) == [3]


def test_unknown_suggests_only_groups_of_the_departement_closest_first() -> None:
    result = find("CPAM Cergy")
    assert isinstance(result, matching.NotFound)
    assert 3 not in ids(result) and 5 not in ids(result)  # never the national list
    assert ids(result)[0] == 2
    assert len(ids(result)) <= matching.MAX_SUGGESTIONS


def agent(i: int, first: str, last: str, email: str | None = None) -> Agent:
    return Agent(i, first, last, email, f"@a{i}:ex.org", None, frozenset({Role.INSTRUCTEUR}))


AGENTS = [
    agent(1, "Marc", "Petit", "marc.petit@caf.fr"),
    agent(2, "Élise", "Durand"),
    agent(3, "Marc", "Petit", "m.petit@cpam.fr"),
]


def test_colleague_by_name_either_order_and_by_email() -> None:
    assert [a.id for a in matching.find_colleague("elise durand", AGENTS).agents] == [2]
    assert [a.id for a in matching.find_colleague("DURAND Élise", AGENTS).agents] == [2]
    assert [a.id for a in matching.find_colleague("Marc.Petit@CAF.fr", AGENTS).agents] == [1]
    assert len(matching.find_colleague("marc petit", AGENTS).agents) == 2  # ambiguous
    assert matching.find_colleague("Jean Inconnu", AGENTS).agents == ()


def test_email_detection() -> None:
    assert matching.looks_like_email("a.b@c.fr")
    assert not matching.looks_like_email("@a:b.org")
    assert not matching.looks_like_email("CPAM 95")
