"""Directory CSV import: Administration+ headers, all-or-nothing, French messages."""

from __future__ import annotations

import pytest

from bot.domain.directory_csv import (
    DirectoryImport,
    ImportGroup,
    ImportProblem,
    ImportRow,
    is_valid_email,
    parse_directory_csv,
)
from bot.domain.model import Role
from bot.domain.policies import Policies
from bot.policy_loader import default_policies_dir, load_policies

HEADER = "Prénom,Nom,Email,Matrix,Instructeur,Responsable,Territoire,Organisation,Groupe,BAL"


@pytest.fixture(scope="module")
def policies() -> Policies:
    return load_policies(default_policies_dir())


def parse(policies: Policies, *lines: str, header: str = HEADER) -> DirectoryImport:
    return parse_directory_csv("\n".join([header, *lines]) + "\n", policies)


def errors(result: DirectoryImport) -> list[str]:
    assert result.rows == ()
    return [str(e) for e in result.errors]


def test_good_file(policies: Policies) -> None:
    result = parse(
        policies,
        "Jeanne,Martin,Jeanne.Martin@CAF.fr,,oui,non,95,CAF,CAF 95,bal.caf95@caf.fr",
        "Paul,Durand,,@paul:matrix.example.org,x,X,95,caf,CAF 95,",
        'Awa,Diallo,awa@fs.fr,@awa:matrix.example.org,,,"95, 78",France Services,FS Cergy,',
    )
    assert result.ok and result.errors == ()
    assert result.rows[0] == ImportRow(
        line=2,
        first_name="Jeanne",
        last_name="Martin",
        email="jeanne.martin@caf.fr",
        matrix_id=None,
        roles=frozenset({Role.INSTRUCTEUR}),
        departements=frozenset({"95"}),
        organisation_id="caf",
        group_name="CAF 95",
        bal="bal.caf95@caf.fr",
    )
    paul = result.rows[1]
    assert paul.email is None and paul.matrix_id == "@paul:matrix.example.org"
    assert paul.roles == frozenset({Role.INSTRUCTEUR, Role.RESPONSABLE})
    awa = result.rows[2]
    assert awa.roles == frozenset({Role.AIDANT})
    assert awa.departements == frozenset({"95", "78"})
    assert awa.organisation_id == "france_services"
    assert result.groups() == (
        ImportGroup("CAF 95", "caf", frozenset({"95"}), "bal.caf95@caf.fr"),
        ImportGroup("FS Cergy", "france_services", frozenset({"95", "78"}), None),
    )


def test_french_excel_export_semicolons_bom_crlf_and_loose_headers(policies: Policies) -> None:
    text = (
        "\ufeffprenom; NOM ;E-mail;Matrix;INSTRUCTEUR;Responsable;Territoire (départements);"
        "organisation;Groupe;Bal;Opérateur;Qualité;Téléphone\r\n"
        "Éloïse;Lefèvre;eloise@msa.fr;;Vrai;faux;2a 2B;msa;MSA Corse;;1;Conseillère;0102030405\r\n"
        ";;;;;;;;;;;;\r\n"
    )
    result = parse_directory_csv(text, policies)
    assert result.ok
    (row,) = result.rows
    assert (row.line, row.first_name, row.last_name) == (2, "Éloïse", "Lefèvre")
    assert row.departements == frozenset({"2A", "2B"})
    assert row.roles == frozenset({Role.INSTRUCTEUR, Role.OPERATEUR})


def test_matrix_column_optional_for_administration_plus_exports(policies: Policies) -> None:
    header = "Prénom,Nom,Email,Instructeur,Responsable,Territoire,Organisation,Groupe,BAL"
    result = parse(policies, "A,B,a@b.fr,oui,,1,CPAM,CPAM 01,", header=header)
    assert result.ok
    assert result.rows[0].departements == frozenset({"01"})  # Excel dropped the zero
    assert result.rows[0].matrix_id is None


def test_territoire_separators(policies: Policies) -> None:
    result = parse(policies, 'A,B,a@b.fr,,oui,,"971; 972,973  974",CAF,CAF DOM,')
    assert result.rows[0].departements == frozenset({"971", "972", "973", "974"})


def test_accent_and_case_insensitive_organisation(policies: Policies) -> None:
    result = parse(
        policies,
        "A,B,a@b.fr,,oui,,75,prefecture,Préf 75,",
        "C,D,c@d.fr,,oui,,75,FRANCE RÉNOV’,FR 75,",
        "E,F,e@f.fr,,oui,,75,france_travail,FT 75,",
    )
    assert [r.organisation_id for r in result.rows] == [
        "prefecture",
        "france_renov",
        "france_travail",
    ]


def test_every_bad_line_reported_and_nothing_imported(policies: Policies) -> None:
    result = parse(
        policies,
        "Jeanne,Martin,jeanne@caf.fr,,oui,,95,CAF,CAF 95,",
        ",,pas-un-email,@Paul:matrix.org,peut-être,,96 95,CAFX,,bal@",
        "Awa,Diallo,,,,,,France Services,FS,",
        "Léa,Roux,lea@fs.fr,,oui,,95,France Services,FS,",
    )
    assert errors(result) == [
        "ligne 3 : Prénom manquant",
        "ligne 3 : Nom manquant",
        "ligne 3 : adresse email invalide « pas-un-email »",
        "ligne 3 : identifiant Matrix invalide « @Paul:matrix.org » "
        "(attendu : @identifiant:serveur, en minuscules)",
        "ligne 3 : organisation inconnue « CAFX »",
        "ligne 3 : Instructeur : valeur « peut-être » non comprise (oui ou non attendu)",
        "ligne 3 : département inconnu « 96 »",
        "ligne 3 : Groupe manquant",
        "ligne 3 : BAL invalide « bal@ » (adresse email attendue)",
        "ligne 4 : ni email ni identifiant Matrix : au moins l'un des deux est requis",
        "ligne 4 : Territoire manquant (au moins un département)",
        "ligne 5 : un instructeur ne peut pas appartenir à « France Services », "
        "organisation côté aidant",
    ]


def test_duplicates_and_group_conflicts(policies: Policies) -> None:
    result = parse(
        policies,
        "A,A,a@caf.fr,@a:m.org,oui,,95,CAF,Accueil 95,bal@caf.fr",
        "B,B,A@CAF.FR,,oui,,95,CAF,Accueil 95,",
        "C,C,c@cpam.fr,@a:m.org,oui,,95,CPAM,accueil  95,",
        "D,D,d@caf.fr,,oui,,95,CAF,Accueil 95,autre@caf.fr",
    )
    assert errors(result) == [
        "ligne 3 : email « a@caf.fr » déjà présent ligne 2",
        "ligne 4 : identifiant Matrix « @a:m.org » déjà présent ligne 2",
        "ligne 4 : le groupe « accueil 95 » est rattaché à une autre organisation ligne 2",
        "ligne 5 : le groupe « Accueil 95 » a déjà la BAL « bal@caf.fr » ligne 2",
    ]


def test_quoted_multiline_cell_keeps_line_numbers(policies: Policies) -> None:
    result = parse(
        policies,
        'A,B,a@b.fr,,oui,,95,CAF,"CAF\n95",',
        "C,D,bad,,oui,,95,CAF,CAF 95,",
    )
    assert errors(result) == ["ligne 4 : adresse email invalide « bad »"]


def test_too_many_cells(policies: Policies) -> None:
    result = parse(policies, "A,B,a@b.fr,,oui,,95,CAF,CAF 95,,surplus")
    assert errors(result) == ["ligne 2 : 11 colonnes pour 10 en-têtes"]


def test_header_problems(policies: Policies) -> None:
    header = "Prénom,Nom,Nom,Mail,Couleur,Territoire,Organisation,Groupe"
    result = parse(policies, "A,B,C,a@b.fr,bleu,95,CAF,G", header=header)
    assert errors(result) == [
        "ligne 1 : colonne « Nom » en double",
        "ligne 1 : colonne inconnue « Couleur »",
        "ligne 1 : colonnes manquantes : Instructeur, Responsable, BAL",
    ]


@pytest.mark.parametrize("text", ["", "\ufeff", "  \n\n"])
def test_empty_file(policies: Policies, text: str) -> None:
    assert errors(parse_directory_csv(text, policies)) == [
        "ligne 1 : fichier vide : la ligne d'en-têtes est absente"
    ]


def test_header_only(policies: Policies) -> None:
    assert errors(parse(policies)) == ["ligne 1 : le fichier ne contient aucun agent"]


def test_problem_rendering() -> None:
    assert str(ImportProblem(7, "Nom manquant")) == "ligne 7 : Nom manquant"


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("a@b.fr", True),
        ("prenom.nom+tag@sous.domaine.gouv.fr", True),
        ("a@b", False),
        ("a b@c.fr", False),
        ("a@@c.fr", False),
        ("@c.fr", False),
        ("a@-c.fr", False),
    ],
)
def test_email_syntax(address: str, valid: bool) -> None:
    assert is_valid_email(address) is valid
