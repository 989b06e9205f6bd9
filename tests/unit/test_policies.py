"""Policies: the shipped files load, and every kind of bad file is refused clearly."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from bot.domain.model import OrganisationKind, Role
from bot.domain.policies import (
    POLICY_FILES,
    PolicyError,
    PolicyProblem,
    fold,
    is_valid_matrix_user_id,
    is_valid_server_name,
    key_path,
    normalise_departement_code,
    validate_policies,
)
from bot.policy_loader import default_policies_dir, load_policies

ORGANISATIONS = """
[organisations.caf]
name = "CAF"
kind = "operateur"

[organisations.france_services]
name = "France Services"
kind = "aidant"
"""

DEPARTEMENTS = """
[departements]
"95" = "Val-d'Oise"
"2A" = "Corse-du-Sud"
"""

ROUTING = """
[categories.social_famille]
label = "Social/Famille"
organisations = ["caf"]

[categories.autre]
label = "Autre"
organisations = []
"""

MEMBERSHIP = """
allowed_homeservers = ["matrix.example.org"]
cross_departement_invitations = false
invitable_roles = ["instructeur"]
invitable_organisation_kinds = ["operateur"]
max_participants = 10
"""

GOOD = {
    "organisations.toml": ORGANISATIONS,
    "departements.toml": DEPARTEMENTS,
    "routing.toml": ROUTING,
    "membership.toml": MEMBERSHIP,
}


def write(folder: Path, **overrides: str | None) -> Path:
    """A policy folder with the small good files, some replaced (None = absent)."""
    files: dict[str, str | None] = dict(GOOD)
    for stem, text in overrides.items():
        files[f"{stem}.toml"] = text
    for name, text in files.items():
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
    return folder


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policies(folder)
    return [str(p) for p in caught.value.problems]


# --- the shipped policies ----------------------------------------------------------


def test_shipped_policies_load() -> None:
    policies = load_policies(default_policies_dir())
    assert len(policies.organisations) == 32
    assert policies.organisation("dgfip") is not None
    assert {o.id for o in policies.organisations.values() if o.kind is OrganisationKind.AIDANT} == {
        "association",
        "dila",
        "france_services",
        "msap",
        "hopital",
    }
    assert [c.label for c in policies.categories.values()] == [
        "Social/Famille",
        "Santé/Handicap",
        "Emploi/Formation",
        "Logement",
        "Retraite",
        "Impôts/Argent",
        "Papiers/Titres",
        "Autre",
    ]
    assert policies.categories["autre"].organisations == ()
    assert policies.membership.max_participants >= 2


def test_shipped_departements_are_the_101_official_codes() -> None:
    departements = load_policies(default_policies_dir()).departements
    assert len(departements) == 101
    for code, name in {
        "971": "Guadeloupe",
        "972": "Martinique",
        "973": "Guyane",
        "974": "La Réunion",
        "976": "Mayotte",
        "2A": "Corse-du-Sud",
        "2B": "Haute-Corse",
        "01": "Ain",
        "95": "Val-d'Oise",
    }.items():
        assert departements[code].name == name
    assert "20" not in departements
    assert "975" not in departements


def test_shipped_catalogue_found_by_id_or_name_ignoring_case_and_accents() -> None:
    policies = load_policies(default_policies_dir())
    for text, expected in {
        "caf": "caf",
        "France Travail": "france_travail",
        "FRANCE TRAVAIL": "france_travail",
        "france_travail": "france_travail",
        "france renov": "france_renov",
        "France Rénov’": "france_renov",
        "prefecture": "prefecture",
        "Sous-Préfecture": "sous_prefecture",
        "hopital": "hopital",
        "  Chèque Énergie ": "cheque_energie",
        "DGFIP": "dgfip",
    }.items():
        found = policies.find_organisation(text)
        assert found is not None and found.id == expected, text
    assert policies.find_organisation("cafx") is None


def test_default_dir_is_the_repository_policies_folder() -> None:
    folder = default_policies_dir()
    assert folder.name == "policies"
    assert {p.name for p in folder.glob("*.toml")} == set(POLICY_FILES)


def test_departement_lookup_is_tolerant_of_typing() -> None:
    policies = load_policies(default_policies_dir())
    assert normalise_departement_code(" 2a ") == "2A"
    assert normalise_departement_code("1") == "01"
    found = policies.departement("9")
    assert found is not None and found.name == "Ariège"
    assert policies.departement("20") is None


def test_small_good_folder_loads(tmp_path: Path) -> None:
    policies = load_policies(write(tmp_path))
    assert set(policies.organisations) == {"caf", "france_services"}
    rules = policies.membership
    assert rules.invitable_roles == frozenset({Role.INSTRUCTEUR})
    assert rules.invitable_organisation_kinds == frozenset({OrganisationKind.OPERATEUR})
    assert not rules.cross_departement_invitations
    # The bot's own server is added by the caller, not written in the file.
    assert not rules.homeserver_allowed("bot.example.org")
    assert rules.with_homeserver("Bot.Example.org").homeserver_allowed("bot.example.org")
    assert rules.homeserver_allowed("Matrix.Example.org")


# --- bad folders --------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope") == [
        f"{tmp_path / 'nope'}: dossier des politiques introuvable"
    ]


def test_missing_file_named(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, membership=None)) == ["membership.toml: fichier manquant"]


def test_toml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    broken = '[departements]\n"95" = "Val-d\'Oise"\n"2A" = \n'
    (problem,) = problems_of(write(tmp_path, departements=broken))
    assert problem.startswith("departements.toml: syntaxe TOML invalide ligne 3, colonne")


def test_non_utf8_file_refused(tmp_path: Path) -> None:
    folder = write(tmp_path)
    (folder / "routing.toml").write_bytes('label = "Santé"'.encode("latin-1"))
    (problem,) = problems_of(folder)
    assert problem.startswith("routing.toml: encodage invalide")


def test_broken_catalogue_does_not_flood_routing_with_unknown_references(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, organisations="[organisations.caf]\nname = \n"))
    assert problems == [
        "organisations.toml: syntaxe TOML invalide ligne 2, colonne 8 : Invalid value"
    ]


def test_toml_error_at_end_of_file(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, organisations="organisations = [")) == [
        "organisations.toml: syntaxe TOML invalide en fin de fichier : Invalid value"
    ]


def test_unknown_organisation_in_routing_names_the_index(tmp_path: Path) -> None:
    routing = """
[categories.logement]
label = "Logement"
organisations = ["caf", "caf", "cafx", "france_services"]
"""
    assert problems_of(write(tmp_path, routing=routing)) == [
        "routing.toml: categories.logement.organisations[1]: organisation « caf » en double",
        "routing.toml: categories.logement.organisations[2]: organisation inconnue « cafx »",
        "routing.toml: categories.logement.organisations[3]: « france_services » est une "
        "organisation côté aidant : elle ne reçoit pas de demandes",
    ]


def test_routing_types_and_keys(tmp_path: Path) -> None:
    routing = """
colour = "blue"

[categories.Logement]
label = ""
organisations = "caf"

[categories.retraite]
organisations = [1]
priority = 3

[categories.emploi]
label = "logement"
organisations = []
"""
    assert problems_of(write(tmp_path, routing=routing)) == [
        "routing.toml: colour: clé inconnue",
        "routing.toml: categories.Logement: identifiant invalide (minuscules ASCII, chiffres et _)",
        "routing.toml: categories.Logement.label: texte vide",
        "routing.toml: categories.Logement.organisations: liste attendue, un texte trouvé",
        "routing.toml: categories.retraite.label: clé obligatoire manquante",
        "routing.toml: categories.retraite.priority: clé inconnue",
        "routing.toml: categories.retraite.organisations[0]: texte attendu, un entier trouvé",
    ]


def test_duplicate_category_labels(tmp_path: Path) -> None:
    routing = """
[categories.a]
label = "Logement"
organisations = []

[categories.b]
label = "LOGEMENT"
organisations = []
"""
    assert problems_of(write(tmp_path, routing=routing)) == [
        "routing.toml: categories.b.label: libellé « LOGEMENT » déjà utilisé par la catégorie « a »"
    ]


def test_organisation_problems(tmp_path: Path) -> None:
    organisations = """
[organisations.caf]
name = "CAF"
kind = "operator"

[organisations.CPAM]
name = "CPAM"
kind = "operateur"

[organisations.caf2]
name = "caf"
kind = "operateur"
colour = "blue"

[organisations.msa]
kind = "operateur"

[organisations.bad]
name = 3
kind = "aidant"
"""
    assert problems_of(write(tmp_path, organisations=organisations)) == [
        "organisations.toml: organisations.caf.kind: type « operator » inconnu "
        "(attendu : aidant, operateur)",
        "organisations.toml: organisations.CPAM: identifiant invalide "
        "(minuscules ASCII, chiffres et _)",
        "organisations.toml: organisations.caf2.colour: clé inconnue",
        "organisations.toml: organisations.caf2.name: nom « caf » confondu avec "
        "l'organisation « caf »",
        "organisations.toml: organisations.msa.name: clé obligatoire manquante",
        "organisations.toml: organisations.bad.name: texte attendu, un entier trouvé",
    ]


def test_organisations_must_be_a_table(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, organisations='organisations = ["caf"]')) == [
        "organisations.toml: organisations: table attendue, une liste trouvé"
    ]


def test_empty_catalogue_refused(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, organisations="[organisations]\n")) == [
        # Routing refers to "caf" but is not judged against a refused catalogue.
        "organisations.toml: organisations: aucune organisation déclarée",
    ]


def test_departement_code_format(tmp_path: Path) -> None:
    departements = """
[departements]
"95" = "Val-d'Oise"
"20" = "Corse"
"1" = "Ain"
"2a" = "Corse-du-Sud"
"975" = "Saint-Pierre-et-Miquelon"
"974" = ""
"973" = "val-d’oise"
"""
    assert problems_of(write(tmp_path, departements=departements)) == [
        "departements.toml: departements.20: code de département invalide « 20 » (ex. 01, 2A, 974)",
        "departements.toml: departements.1: code de département invalide « 1 » (ex. 01, 2A, 974)",
        "departements.toml: departements.2a: code de département invalide « 2a » (ex. 01, 2A, 974)",
        "departements.toml: departements.975: code de département invalide « 975 » "
        "(ex. 01, 2A, 974)",
        "departements.toml: departements.974: texte vide",
        "departements.toml: departements.973: nom « val-d’oise » déjà utilisé "
        "par le département 95",
    ]


def test_membership_problems_all_reported(tmp_path: Path) -> None:
    membership = """
allowed_homeservers = ["matrix.example.org", "MATRIX.example.org", "bad host", "h:99999", "-x.org"]
cross_departement_invitations = "oui"
invitable_roles = ["instructeur", "chef", "instructeur"]
invitable_organisation_kinds = "operateur"
max_participants = 1
extra = true
"""
    assert problems_of(write(tmp_path, membership=membership)) == [
        "membership.toml: extra: clé inconnue",
        "membership.toml: allowed_homeservers[1]: serveur « MATRIX.example.org » en double",
        "membership.toml: allowed_homeservers[2]: nom de serveur invalide « bad host » "
        "(ex. matrix.gouv.fr)",
        "membership.toml: allowed_homeservers[3]: nom de serveur invalide « h:99999 » "
        "(ex. matrix.gouv.fr)",
        "membership.toml: allowed_homeservers[4]: nom de serveur invalide « -x.org » "
        "(ex. matrix.gouv.fr)",
        "membership.toml: cross_departement_invitations: booléen attendu (true/false), "
        "un texte trouvé",
        "membership.toml: invitable_roles[1]: valeur « chef » inconnue "
        "(attendu : aidant, instructeur, responsable, operateur)",
        "membership.toml: invitable_roles[2]: valeur « instructeur » en double",
        "membership.toml: invitable_organisation_kinds: liste attendue, un texte trouvé",
        "membership.toml: max_participants: au moins 2 participants (trouvé : 1)",
    ]


def test_membership_missing_keys_and_bool_is_not_an_int(tmp_path: Path) -> None:
    membership = "allowed_homeservers = []\nmax_participants = true\n"
    assert problems_of(write(tmp_path, membership=membership)) == [
        "membership.toml: cross_departement_invitations: clé obligatoire manquante",
        "membership.toml: invitable_roles: clé obligatoire manquante",
        "membership.toml: invitable_organisation_kinds: clé obligatoire manquante",
        "membership.toml: max_participants: entier attendu, un booléen trouvé",
    ]


def test_errors_from_several_files_reported_together(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        organisations=ORGANISATIONS + '\n[organisations.msa]\nname = "MSA"\n',
        departements='[departements]\n"96" = "Nulle part"\n',
        routing=ROUTING.replace('["caf"]', '["caf", "cnaf"]'),
        membership=None,
    )
    problems = problems_of(folder)
    assert problems == [
        "membership.toml: fichier manquant",
        "organisations.toml: organisations.msa.kind: clé obligatoire manquante",
        "departements.toml: departements.96: code de département invalide « 96 » (ex. 01, 2A, 974)",
    ]
    # The routing reference to "cnaf" is not judged against a broken catalogue...
    assert not any(p.startswith("routing.toml") for p in problems)


def test_routing_and_membership_errors_reported_together(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        routing=ROUTING.replace('["caf"]', '["caf", "cnaf"]'),
        membership=MEMBERSHIP.replace("max_participants = 10", "max_participants = 0"),
    )
    # ...but it is once the catalogue is sound.
    assert problems_of(folder) == [
        "routing.toml: categories.social_famille.organisations[1]: organisation inconnue « cnaf »",
        "membership.toml: max_participants: au moins 2 participants (trouvé : 0)",
    ]


def test_pure_validation_reports_missing_and_unexpected_files() -> None:
    with pytest.raises(PolicyError) as caught:
        validate_policies({"organisation.toml": {}})
    assert caught.value.problems[0] == PolicyProblem(
        "organisation.toml", "", "fichier de politique inattendu"
    )
    assert {p.file for p in caught.value.problems[1:]} == set(POLICY_FILES)
    assert all(p.message == "fichier manquant" for p in caught.value.problems[1:])
    assert "organisations.toml: fichier manquant" in str(caught.value)


def test_pure_validation_accepts_parsed_mappings(tmp_path: Path) -> None:
    import tomllib

    raw: dict[str, dict[str, Any]] = {name: tomllib.loads(text) for name, text in GOOD.items()}
    policies = validate_policies(raw)
    assert policies.categories["social_famille"].organisations == ("caf",)


def test_copied_shipped_folder_loads(tmp_path: Path) -> None:
    target = tmp_path / "policies"
    shutil.copytree(default_policies_dir(), target)
    assert len(load_policies(target).departements) == 101


# --- helpers --------------------------------------------------------------------------


def test_fold_and_key_path() -> None:
    assert fold("  Sous-Préfecture ") == "sous prefecture"
    assert fold("France Rénov'") == fold("france_renov")
    assert key_path("categories", "logement", "organisations", 2) == (
        "categories.logement.organisations[2]"
    )
    assert key_path("departements", "a.b") == 'departements."a.b"'


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("matrix.org", True),
        ("localhost", True),
        ("localhost:8448", True),
        ("1.2.3.4:80", True),
        ("[::1]:8448", True),
        ("bad host", False),
        ("", False),
        ("host:0", False),
        ("host:", False),
        ("-a.org", False),
        ("a..org", False),
    ],
)
def test_server_names(name: str, valid: bool) -> None:
    assert is_valid_server_name(name) is valid


@pytest.mark.parametrize(
    ("user_id", "valid"),
    [
        ("@jean.dupont:matrix.org", True),
        ("@bot_1=x/y+z:localhost:8008", True),
        ("@Jean:matrix.org", False),
        ("jean:matrix.org", False),
        ("@jean", False),
        ("@:matrix.org", False),
        ("@jean dupont:matrix.org", False),
        ("@jean:bad host", False),
        ("@" + "a" * 250 + ":matrix.org", False),
    ],
)
def test_matrix_user_ids(user_id: str, valid: bool) -> None:
    assert is_valid_matrix_user_id(user_id) is valid


def test_duplicate_ids_and_codes_are_refused_by_toml_with_their_line(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        organisations=ORGANISATIONS
        + '\n[organisations.caf]\nname = "CAF bis"\nkind = "operateur"\n',
        departements=DEPARTEMENTS + '"95" = "Val-d\'Oise bis"\n',
    )
    problems = problems_of(folder)
    assert len(problems) == 2
    assert problems[0].startswith("organisations.toml: syntaxe TOML invalide ligne 10")
    assert problems[1].startswith("departements.toml: syntaxe TOML invalide ligne 5")


def test_an_organisation_may_keep_the_optional_identifiers_out_of_emails(tmp_path: Path) -> None:
    shipped = load_policies(default_policies_dir())
    cpam, caf = shipped.organisation("cpam"), shipped.organisation("caf")
    assert cpam is not None and cpam.withholds_identifiers
    assert caf is not None and not caf.withholds_identifiers  # the default: in full
    organisations = """
[organisations.caf]
name = "CAF"
kind = "operateur"
email_identifiers = "partial"
"""
    assert problems_of(write(tmp_path, organisations=organisations)) == [
        "organisations.toml: organisations.caf.email_identifiers: valeur « partial » inconnue "
        "(attendu : full, withheld)",
    ]
