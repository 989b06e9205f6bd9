"""Matching the opening form against the policies and the directory: aliases, names of
départements, identifiers each organisation requires, what is available where, and what
a category resolves to. Pure and fast."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from bot.domain import form as f
from bot.domain.form import DraftFields, read_fields
from bot.domain.model import Agent, Group, Role
from bot.domain.policies import PolicyError
from bot.domain.routing import available_organisations, closest_organisations
from bot.policy_loader import default_policies_dir, load_policies
from bot.services.drafts import Assessment, Directory, assess
from tests.unit.test_policies import ORGANISATIONS, write

POLICIES = load_policies(default_policies_dir())
TODAY = date(2026, 3, 15)


@pytest.mark.parametrize(
    ("text", "org_id"),
    [
        ("sécu", "cpam"),
        ("Assurance maladie", "cpam"),
        ("Pôle emploi", "france_travail"),
        ("pole-emploi", "france_travail"),
        ("impôts", "dgfip"),
        ("Finances publiques", "dgfip"),
        ("allocations familiales", "caf"),
        ("caf", "caf"),
        ("France Renov", "france_renov"),
    ],
)
def test_organisations_by_name_and_usual_alias(text: str, org_id: str) -> None:
    found = POLICIES.find_organisation(text)
    assert found is not None and found.id == org_id


@pytest.mark.parametrize("text", ["95", "Val d'Oise", "val-d-oise", "VAL D OISE", "Val-d’Oise"])
def test_departement_by_code_or_name(text: str) -> None:
    found = POLICIES.find_departement(text)
    assert found is not None and found.code == "95"


def test_identifiers_required_and_suggested_as_data() -> None:
    # Administration+: the NIR for the health and pension bodies; the CAF number for
    # the CAF and the numéro fiscal for the DGFiP are suggested.
    for org_id in ("cpam", "msa", "carsat", "cnav"):
        assert POLICIES.organisations[org_id].required_identifiers == ("nir",), org_id
    assert POLICIES.organisations["caf"].suggested_identifiers == ("numero_allocataire_caf",)
    assert POLICIES.organisations["dgfip"].suggested_identifiers == ("nif",)
    assert POLICIES.organisations["caf"].required_identifiers == ()


def test_bad_aliases_and_identifiers_are_reported(tmp_path: Path) -> None:
    bad = ORGANISATIONS.replace(
        'name = "CAF"\nkind = "operateur"',
        'name = "CAF"\nkind = "operateur"\naliases = ["France Services"]\n'
        'required_identifiers = ["passeport"]',
    )
    with pytest.raises(PolicyError) as caught:
        load_policies(write(tmp_path, organisations=bad))
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "organisations.caf.required_identifiers[0]" in text and "passeport" in text
    assert "France Services" in text and "confondu" in text


# --- the directory: what is available in a département -----------------------------

GROUPS = [
    Group(1, "CAF 95", "caf", frozenset({"95"})),
    Group(2, "MSA 95", "msa", frozenset({"95"})),
    Group(3, "CPAM 95", "cpam", frozenset({"95"})),  # nobody in it
    Group(4, "ANAH 13", "anah", frozenset({"13"})),
]
AGENTS = [
    Agent(1, "Paul", "Durand", None, "@paul:hs", 1, frozenset({Role.INSTRUCTEUR})),
    Agent(2, "Lucie", "Bernard", "lucie@msa.test", None, 2, frozenset({Role.INSTRUCTEUR})),
    Agent(3, "Anne", "Petit", None, "@anne:hs", 4, frozenset({Role.INSTRUCTEUR})),
]


def test_available_organisations_have_a_group_with_instructeurs_there() -> None:
    found = available_organisations("95", GROUPS, AGENTS, POLICIES)
    assert [o.id for o in found] == ["caf", "msa"]
    assert [o.id for o in available_organisations("13", GROUPS, AGENTS, POLICIES)] == ["anah"]
    assert available_organisations("2A", GROUPS, AGENTS, POLICIES) == ()


def test_closest_available_organisations() -> None:
    available = available_organisations("95", GROUPS, AGENTS, POLICIES)
    assert [o.id for o in closest_organisations("CAFF", available)] == ["caf"]
    assert closest_organisations("la caf de Cergy", available)[0].id == "caf"
    assert closest_organisations("zzzz", available) == ()


FORM = f"""territoire : 95
organismes : {{organismes}}
objet : Blocage du versement de l'allocation logement
prénom : Jeanne
nom : Dupontel
date de naissance : 12/03/1961
mandat : papier
date du mandat : hier
description : Le versement est suspendu.
{f.ATTESTATION}
"""


def _assess(organismes: str, *more: str) -> Assessment:
    fields = DraftFields().merged(read_fields(FORM.replace("{organismes}", organismes)))
    for line in more:
        fields = fields.merged(read_fields(line))
    return assess(fields, today=TODAY, directory=Directory(GROUPS, AGENTS, POLICIES))


def test_a_category_with_several_available_organisations_asks_which() -> None:
    result = _assess("logement")
    assert result.form is None
    (problem,) = result.problems
    assert problem.field == f.ORGANISMES
    assert "regroupe : CAF, MSA" in problem.message and "À quel(s) organisme(s)" in problem.message


def test_a_category_with_one_available_organisation_uses_it_and_says_so() -> None:
    result = _assess("", "catégorie : Emploi/Formation")
    (problem,) = result.problems
    assert "Aucun organisme de la catégorie « Emploi/Formation »" in problem.message
    retraite = _assess("", "catégorie : Retraite")  # CARSAT, CNAV, MSA: only the MSA here
    # The MSA requires the NIR: asked for, never sent without it.
    (problem,) = retraite.problems
    assert problem.field == f.NIR and "obligatoire pour MSA" in problem.message
    nir = "2610395123456" + f"{97 - 2610395123456 % 97:02d}"
    done = _assess("", "catégorie : Retraite", f"NIR : {nir}")
    assert done.form is not None, done.problems
    assert done.form.organisations == ("msa",)
    assert any("le seul organisme" in line for line in done.understood)


def test_an_unavailable_organisation_gets_the_available_ones() -> None:
    result = _assess("CPAM")
    messages = [p.message for p in result.problems]
    assert any("Aucun groupe de l'organisme CPAM" in m for m in messages), messages


def test_the_recap_advises_the_suggested_identifier() -> None:
    result = _assess("CAF")
    assert result.form is not None
    assert any("numéro allocataire CAF" in a for a in result.advice)
