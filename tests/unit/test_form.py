"""The opening form: template, tolerant parsing, validation, round trip."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.domain import form as form_module
from bot.domain.form import (
    ATTESTATION,
    DEFAULT_CATEGORIES,
    FORM_TEMPLATE,
    FormErrors,
    NotAForm,
    nir_problem,
    normalise_phone,
    parse_date,
    parse_form,
    render_form,
)
from bot.domain.model import DemandeForm, Mandat, MandatType, Usager

TODAY = date(2026, 3, 15)
DEPARTEMENTS = frozenset(
    [f"{n:02d}" for n in range(1, 96) if n != 20] + ["2A", "2B", "971", "972", "973", "974", "976"]
)
ORGANISATIONS = {"caf": "caf", "cpam": "cpam", "msa": "msa", "ddfip": "ddfip", "urssaf": "urssaf"}

VALID_NIR = "180027512345676"
VALID_NIR_2A = "180022A12345636"
VALID_NIR_2B = "180022B12345663"


def lookup(name: str) -> str | None:
    return ORGANISATIONS.get(name.strip().lower())


def parse(text: str) -> object:
    return parse_form(
        text,
        today=TODAY,
        known_departements=DEPARTEMENTS,
        organisation_lookup=lookup,
        categories=DEFAULT_CATEGORIES,
    )


FILLED = f"""territoire : 95
organismes : CAF, CPAM
catégorie :
objet : Rupture de droits au RSA depuis janvier
prénom : Jeanne
nom : Dupont
date de naissance : 05/03/1980
NIR : 2 80 03 95 123 456 xx
numéro allocataire CAF : 1234567
NIF :
adresse : 12 rue des Lilas, 95000 Cergy
téléphone : 06 12 34 56 78
mandat : papier
date du mandat : 10/03/2026
description :
Madame n'a plus de versement depuis janvier.

Elle a envoyé ses justificatifs deux fois.
{ATTESTATION}
"""


def _valid_nir_for(body: str) -> str:
    return body + f"{97 - int(body) % 97:02d}"


def filled(**replace: str) -> str:
    text = FILLED.replace("2 80 03 95 123 456 xx", _valid_nir_for("2800395123456"))
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def errors_of(text: str) -> tuple[str, ...]:
    result = parse(text)
    assert isinstance(result, FormErrors), result
    return result.messages


def test_a_filled_form_gives_a_demande_form() -> None:
    result = parse(filled())
    assert result == DemandeForm(
        territoire="95",
        organisations=("caf", "cpam"),
        categorie=None,
        objet="Rupture de droits au RSA depuis janvier",
        usager=Usager(
            prenom="Jeanne",
            nom="Dupont",
            date_naissance=date(1980, 3, 5),
            nir=_valid_nir_for("2800395123456"),
            numero_allocataire_caf="1234567",
            nif=None,
            adresse="12 rue des Lilas, 95000 Cergy",
            telephone="06 12 34 56 78",
        ),
        description=(
            "Madame n'a plus de versement depuis janvier.\n\n"
            "Elle a envoyé ses justificatifs deux fois."
        ),
        mandat=Mandat(type=MandatType.PAPIER, date=date(2026, 3, 10), attestation=True),
    )


def test_template_lists_every_field_and_the_attestation() -> None:
    keys = [line.split(":")[0].strip() for line in FORM_TEMPLATE.splitlines() if " :" in line]
    keys = [k for k in keys if not k.startswith(("#", form_module.EXPLANATION))]
    assert keys == list(form_module.FIELDS)
    assert ATTESTATION in FORM_TEMPLATE.splitlines()
    assert "aucune donnée personnelle" in FORM_TEMPLATE
    assert "copiez tout ce message" in FORM_TEMPLATE
    assert "papier, oral ou sms" in FORM_TEMPLATE


def test_blank_template_is_a_form_with_every_required_field_missing() -> None:
    messages = errors_of(FORM_TEMPLATE)
    text = "\n".join(messages)
    for key in ("territoire", "objet", "prénom", "nom", "date de naissance", "mandat"):
        assert f"« {key} » est obligatoire" in text
    assert "date du mandat" in text
    assert "description" in text
    assert "au moins un organisme" in text
    # The attestation line is in the template, so it is not reported missing.
    assert not any("manque" in m for m in messages)


def test_a_message_without_any_key_is_not_a_form() -> None:
    assert parse("Bonjour, pouvez-vous m'aider ?\nMerci : à bientôt") == NotAForm()
    assert parse("") == NotAForm()


def test_tolerant_keys_case_accents_bullets_markdown_and_spacing() -> None:
    text = filled(**{"territoire : 95": "- **TERRITOIRE**: 95"})
    text = text.replace("prénom : Jeanne", "* Prenom:Jeanne").replace(
        "nom : Dupont", "**Nom :** Dupont"
    )
    text = text.replace("date de naissance :", "Date De Naissance   :")
    text = text.replace("téléphone : 06 12 34 56 78", "1. telephone : +33 6 12 34 56 78")
    result = parse(text)
    assert isinstance(result, DemandeForm), result
    assert result.territoire == "95"
    assert result.usager.prenom == "Jeanne"
    assert result.usager.nom == "Dupont"
    assert result.usager.telephone == "06 12 34 56 78"


def test_windows_line_endings_and_reply_fallback_are_ignored() -> None:
    quoted = "> <@bot:localhost> Copiez le formulaire\n> territoire :\n> objet :\n\n"
    result = parse(quoted + filled().replace("\n", "\r\n"))
    assert isinstance(result, DemandeForm)


def test_all_problems_are_reported_at_once() -> None:
    text = filled(**{"territoire : 95": "territoire : 9Z"})
    text = text.replace("date de naissance : 05/03/1980", "date de naissance : 05/03/2030")
    text = text.replace("date du mandat : 10/03/2026", "date du mandat : 16/03/2026")
    text = text.replace("mandat : papier", "mandat : pigeon")
    text = text.replace(ATTESTATION, "")
    text = text.replace("organismes : CAF, CPAM", "organismes : CAF, Mutuelle X")
    messages = errors_of(text)
    joined = "\n".join(messages)
    assert "« 9Z » n'existe pas" in joined
    assert "date de naissance (05/03/2030) est dans le futur" in joined
    assert "date du mandat (16/03/2026) est dans le futur" in joined
    assert "« pigeon » est inconnu" in joined
    assert "papier, oral ou sms" in joined
    assert "« Mutuelle X » est inconnu" in joined
    assert f"« {ATTESTATION} » manque" in joined
    assert len(messages) == 6


def test_objet_too_long_says_by_how_much() -> None:
    long_objet = "Demande " + "x" * 160
    (message,) = errors_of(filled(**{"Rupture de droits au RSA depuis janvier": long_objet}))
    assert f"{len(long_objet)} caractères" in message
    assert f"{len(long_objet) - 150} de trop" in message


def test_objet_must_not_carry_personal_data() -> None:
    for objet in (
        "Dossier de Jeanne",
        "RSA de Mme DUPONT",
        "Appeler le 0612345678",
        "Allocataire 1234567",
        "Né le 05/03/1980",
    ):
        (message,) = errors_of(filled(**{"Rupture de droits au RSA depuis janvier": objet}))
        assert "aucune donnée personnelle" in message


def test_unparseable_and_impossible_dates() -> None:
    for bad in ("5 brumaire 1980", "31/02/1980", "05/03/1980/2"):
        (message,) = errors_of(filled(**{"05/03/1980": bad}))
        assert f"« {bad} » n'est pas une date valide" in message
        assert "JJ/MM/AAAA" in message


def test_usager_over_130_years() -> None:
    (message,) = errors_of(filled(**{"05/03/1980": "14/03/1895"}))
    assert "plus de 130 ans" in message
    assert isinstance(parse(filled(**{"05/03/1980": "15/03/1896"})), DemandeForm)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("05/03/1980", date(1980, 3, 5)),
        ("5/3/1980", date(1980, 3, 5)),
        ("05-03-1980", date(1980, 3, 5)),
        ("05.03.1980", date(1980, 3, 5)),
        ("1980-03-05", date(1980, 3, 5)),
        (" 1980-03-05 ", date(1980, 3, 5)),
        ("1980/03/05", None),
        ("29/02/2023", None),
        ("", None),
    ],
)
def test_date_formats(text: str, expected: date | None) -> None:
    assert parse_date(text) == expected


def test_organismes_or_categorie() -> None:
    only_category = filled(
        **{"organismes : CAF, CPAM": "organismes :", "catégorie :": "catégorie : logement"}
    )
    result = parse(only_category)
    assert isinstance(result, DemandeForm)
    assert result.organisations == ()
    assert result.categorie == "Logement"
    (message,) = errors_of(filled(**{"organismes : CAF, CPAM": "organismes :"}))
    assert "au moins un organisme" in message
    (message,) = errors_of(filled(**{"catégorie :": "catégorie : Jardinage"}))
    assert "« Jardinage » est inconnue" in message
    assert "Santé/Handicap" in message


def test_organismes_separators_and_duplicates() -> None:
    result = parse(filled(**{"CAF, CPAM": "CAF et CPAM / caf; MSA"}))
    assert isinstance(result, DemandeForm)
    assert result.organisations == ("caf", "cpam", "msa")


@pytest.mark.parametrize(
    "code", ["2a", "2B", "974", "1", "01", "95 - Val-d'Oise", "Val-d'Oise (95)"]
)
def test_territoire_codes(code: str) -> None:
    result = parse(filled(**{"territoire : 95": f"territoire : {code}"}))
    assert isinstance(result, DemandeForm), result
    assert result.territoire in DEPARTEMENTS


@pytest.mark.parametrize("code", ["9Z", "20", "975", "100", "Cergy"])
def test_unknown_territoire(code: str) -> None:
    (message,) = errors_of(filled(**{"territoire : 95": f"territoire : {code}"}))
    assert f"« {code} » n'existe pas" in message


def test_nir_valid_including_corsica() -> None:
    assert nir_problem(VALID_NIR) is None
    assert nir_problem(VALID_NIR_2A) is None
    assert nir_problem(VALID_NIR_2B) is None
    assert nir_problem("285039901234568") is None  # born abroad (99)


@pytest.mark.parametrize(
    ("nir", "expected"),
    [
        ("18002751234567", "vous en avez saisi 14"),
        ("1800275123456760", "vous en avez saisi 16"),
        ("180027512345677", "clé du NIR"),
        # 2B with the key of 2A: the Corsican substitution must differ (19 vs 18).
        ("180022B12345636", "clé du NIR"),
        ("18002XX12345636", "que des chiffres"),
        ("180022C12345636", "que des chiffres"),
        ("1800275123456AB", "que des chiffres"),
        ("980027512345676", "commencer par 1 ou 2"),
    ],
)
def test_nir_invalid(nir: str, expected: str) -> None:
    problem = nir_problem(nir)
    assert problem is not None
    assert expected in problem


def test_nir_in_form_is_normalised() -> None:
    spaced = "1 80 02 2A 123 456 36"
    result = parse(filled(**{_valid_nir_for("2800395123456"): spaced}))
    assert isinstance(result, DemandeForm)
    assert result.usager.nir == VALID_NIR_2A
    (message,) = errors_of(filled(**{_valid_nir_for("2800395123456"): "123"}))
    assert "15 caractères" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0612345678", "06 12 34 56 78"),
        ("06.12.34.56.78", "06 12 34 56 78"),
        ("+33 6 12 34 56 78", "06 12 34 56 78"),
        ("0033 1 23 45 67 89", "01 23 45 67 89"),
        ("+262 692 12 34 56", "06 92 12 34 56"),
        ("06 12 34 56 7", None),
        ("0012345678", None),
        ("+44 20 7946 0000", None),
        ("numéro", None),
    ],
)
def test_phone_numbers(raw: str, expected: str | None) -> None:
    assert normalise_phone(raw) == expected


def test_bad_phone_nif_and_allocataire_messages() -> None:
    text = filled(
        **{
            "téléphone : 06 12 34 56 78": "téléphone : 12345",
            "NIF :": "NIF : 4123",
            "numéro allocataire CAF : 1234567": "numéro allocataire CAF : AB12",
        }
    )
    joined = "\n".join(errors_of(text))
    assert "pas un numéro français valide" in joined
    assert "13 chiffres" in joined
    assert "que des chiffres" in joined


def test_mandat_types_are_tolerant() -> None:
    for raw, expected in (
        ("Papier", MandatType.PAPIER),
        ("ORAL", MandatType.ORAL),
        ("Sms", MandatType.SMS),
    ):
        result = parse(filled(**{"mandat : papier": f"mandat : {raw}"}))
        assert isinstance(result, DemandeForm)
        assert result.mandat.type is expected


def test_attestation_refused_or_reformatted() -> None:
    (message,) = errors_of(filled(**{ATTESTATION: ATTESTATION + " : non"}))
    assert "Sans l'accord de l'usager" in message
    bullet = filled(**{ATTESTATION: "- [x] **j’atteste avoir recueilli l’accord de l’usager**"})
    assert isinstance(parse(bullet), DemandeForm)


def test_description_spans_lines_until_next_key() -> None:
    text = filled().replace(
        "description :\n",
        "description : Première ligne\n",
    )
    text = text.replace(
        "Elle a envoyé ses justificatifs deux fois.\n",
        "Elle a envoyé ses justificatifs deux fois.\nremarque : urgent\nmandat : papier\n",
    )
    result = parse(text)
    assert isinstance(result, DemandeForm)
    assert result.description.startswith("Première ligne\nMadame")
    assert result.description.endswith("deux fois.\nremarque : urgent")


def test_required_fields_missing_and_duplicates() -> None:
    text = filled(**{"prénom : Jeanne": "prénom :", "nom : Dupont": "nom : Dupont\nnom : Durand"})
    joined = "\n".join(errors_of(text))
    assert "« prénom » est obligatoire" in joined
    assert "« nom » apparaît plusieurs fois" in joined


def test_value_on_the_next_line_and_typo_in_a_key() -> None:
    result = parse(
        filled(**{"adresse : 12 rue des Lilas, 95000 Cergy": "adresse :\n12 rue des Lilas"})
    )
    assert isinstance(result, DemandeForm)
    assert result.usager.adresse == "12 rue des Lilas"
    joined = "\n".join(errors_of(filled(**{"prénom : Jeanne": "prenon : Jeanne"})))
    assert "« prenon » n'est pas reconnu" in joined
    assert "« prénom » ?" in joined


# --- round trip -------------------------------------------------------------

_words = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzéèàçôABCDEFGHIJKLMNOPQRSTUVWXYZ-'", min_size=1, max_size=12
)
_phrase = st.lists(_words, min_size=1, max_size=8).map(" ".join)
_line = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzéàç0123456789 ,.!?()-'", min_size=0, max_size=40),
    min_size=1,
    max_size=5,
)


@st.composite
def forms(draw: st.DrawFn) -> DemandeForm:
    organisations = tuple(
        draw(st.lists(st.sampled_from(sorted(ORGANISATIONS)), unique=True, max_size=3))
    )
    categorie = draw(st.none() | st.sampled_from(DEFAULT_CATEGORIES))
    if not organisations and categorie is None:
        categorie = "Autre"
    born = draw(st.dates(min_value=date(1897, 1, 1), max_value=TODAY))
    body = draw(st.sampled_from(["1800275123456", "2850399012345", "18002" + "2A" + "123456"]))
    numeric = body.replace("2A", "19")
    nir = draw(st.none() | st.just(body + f"{97 - int(numeric) % 97:02d}"))
    description = "\n".join(line.strip() for line in draw(_line)).strip()
    assume(description)
    objet = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz éàô", min_size=1, max_size=150))
    objet = " ".join(objet.split())
    assume(objet)
    form = DemandeForm(
        territoire=draw(st.sampled_from(sorted(DEPARTEMENTS))),
        organisations=organisations,
        categorie=categorie,
        objet=objet,
        usager=Usager(
            prenom=draw(_phrase),
            nom=draw(_phrase),
            date_naissance=born,
            nir=nir,
            numero_allocataire_caf=draw(st.none() | st.from_regex(r"\d{7}", fullmatch=True)),
            nif=draw(st.none() | st.from_regex(r"[0-3]\d{12}", fullmatch=True)),
            adresse=draw(st.none() | _phrase),
            telephone=draw(st.none() | st.sampled_from(["06 12 34 56 78", "01 23 45 67 89"])),
        ),
        description=description,
        mandat=Mandat(
            type=draw(st.sampled_from(list(MandatType))),
            date=draw(st.dates(min_value=born, max_value=TODAY)),
            attestation=True,
        ),
    )
    assume(not form_module._objet_personal_data(form.objet, (form.usager.prenom, form.usager.nom)))
    return form


@settings(max_examples=200, deadline=None)
@given(forms())
def test_render_then_parse_gives_the_same_form(form: DemandeForm) -> None:
    assert parse(render_form(form)) == form


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_parser_never_crashes(text: str) -> None:
    assert isinstance(parse(text), DemandeForm | FormErrors | NotAForm)
