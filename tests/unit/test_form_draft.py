"""The draft kept between messages, natural values, and the template in Element's composer."""

from __future__ import annotations

from datetime import date

import commonmark  # type: ignore[import-untyped]
import pytest

from bot.domain import form as f
from bot.domain.form import (
    ATTESTATION,
    DraftFields,
    Vocabulary,
    evaluate,
    find_departement,
    parse_mandat,
    parse_natural_date,
    read_fields,
)
from bot.domain.model import MandatType

TODAY = date(2026, 3, 15)
DEPARTEMENTS = {
    "95": "Val-d'Oise",
    "2A": "Corse-du-Sud",
    "974": "La Réunion",
    "13": "Bouches-du-Rhône",
}
ORGS = {"caf": ("caf", "CAF"), "cpam": ("cpam", "CPAM"), "secu": ("cpam", "CPAM")}


def vocabulary(**kwargs: object) -> Vocabulary:
    return Vocabulary(
        departements=DEPARTEMENTS,
        organisation=lambda text: ORGS.get(text.strip().lower()),
        categories=("Logement", "Santé/Handicap"),
        **kwargs,  # type: ignore[arg-type]
    )


WHOLE = f"""territoire : 95
organismes : CAF
objet : Blocage du versement de l'allocation logement
prénom : Jeanne
nom : Dupontel
date de naissance : 12/13/1961
mandat : papier
date du mandat : hier
description : Le versement est suspendu.
{ATTESTATION}
"""


def test_a_single_line_correction_is_merged_and_only_what_is_wrong_is_listed() -> None:
    draft = DraftFields().merged(read_fields(WHOLE))
    first = evaluate(draft, today=TODAY, vocabulary=vocabulary())
    assert first.form is None
    assert first.missing_or_wrong() == (f.DATE_NAISSANCE,)
    (problem,) = first.problems
    assert "12/13/1961" in problem.message

    draft = draft.merged(read_fields("date de naissance : 12/03/1961"))
    second = evaluate(draft, today=TODAY, vocabulary=vocabulary())
    assert second.problems == ()
    assert second.form is not None
    assert second.form.usager.date_naissance == date(1961, 3, 12)
    assert second.form.mandat.date == date(2026, 3, 14)  # « hier »
    # The attestation of the first message is kept: a correction need not repeat it.
    assert draft.attested is True


def test_a_draft_started_with_one_line_lists_every_missing_field() -> None:
    draft = DraftFields().merged(read_fields("nom : Dupontel"))
    result = evaluate(draft, today=TODAY, vocabulary=vocabulary())
    missing = result.missing_or_wrong()
    assert f.NOM not in missing
    assert missing[0] == f.TERRITOIRE and missing[-1] == f.ACCORD


def test_an_empty_value_clears_the_field_and_the_draft_round_trips() -> None:
    draft = DraftFields().merged(read_fields(WHOLE)).merged(read_fields("objet :"))
    assert draft.values[f.OBJET] == ""
    again = DraftFields.from_json(draft.to_json())
    assert again == draft
    shown = f.render_draft(draft)
    back = DraftFields().merged(read_fields(shown))
    assert {k: v for k, v in back.values.items() if v} == {
        k: v for k, v in draft.values.items() if v
    }
    assert back.attested is draft.attested


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("aujourd'hui", TODAY),
        ("Aujourd’hui", TODAY),
        ("hier", date(2026, 3, 14)),
        ("avant-hier", date(2026, 3, 13)),
        ("12 mars 1961", date(1961, 3, 12)),
        ("1er août 1961", date(1961, 8, 1)),
        ("12 03 1961", date(1961, 3, 12)),
        ("12031961", date(1961, 3, 12)),
        ("12/03/61", date(1961, 3, 12)),
        ("12/03/26", date(2026, 3, 12)),
        ("1961-03-12", date(1961, 3, 12)),
        ("le 12/3/1961", date(1961, 3, 12)),
        ("31 février 1961", None),
        ("demain", None),
    ],
)
def test_natural_dates(text: str, expected: date | None) -> None:
    assert parse_natural_date(text, TODAY) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("95", "95"),
        ("Val d'Oise", "95"),
        ("val-d-oise", "95"),
        ("VAL D’OISE", "95"),
        ("Val-d'Oise (95)", "95"),
        ("corse du sud", "2A"),
        ("2a", "2A"),
        ("la reunion", "974"),
        ("Réunion", None),
        ("bouches du rhone", "13"),
        ("Cergy", None),
    ],
)
def test_departement_by_name_or_code(text: str, code: str | None) -> None:
    assert find_departement(text, DEPARTEMENTS) == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Papier", MandatType.PAPIER),
        ("écrit", MandatType.PAPIER),
        ("mandat signé", MandatType.PAPIER),
        ("à l'oral", MandatType.ORAL),
        ("par téléphone", MandatType.ORAL),
        ("verbal", MandatType.ORAL),
        ("texto", MandatType.SMS),
        ("par SMS", MandatType.SMS),
        ("pigeon", None),
    ],
)
def test_mandate_synonyms(text: str, expected: MandatType | None) -> None:
    assert parse_mandat(text) is expected


def test_every_interpretation_is_reported() -> None:
    text = WHOLE.replace("territoire : 95", "territoire : val-d-oise").replace(
        "12/13/1961", "12 mars 1961"
    )
    text = text.replace("organismes : CAF", "organismes : sécu").replace(
        "mandat : papier", "mandat : texto"
    )
    vocab = Vocabulary(
        departements=DEPARTEMENTS,
        organisation=lambda t: ORGS.get(f.loose(t)),
        categories=(),
    )
    result = evaluate(DraftFields().merged(read_fields(text)), today=TODAY, vocabulary=vocab)
    assert result.form is not None, result.problems
    understood = {i.field: (i.written, i.understood) for i in result.interpretations}
    assert understood[f.TERRITOIRE] == ("val-d-oise", "95 (Val-d'Oise)")
    assert understood[f.DATE_NAISSANCE] == ("12 mars 1961", "12/03/1961")
    assert understood[f.DATE_MANDAT] == ("hier", "14/03/2026")
    assert understood[f.ORGANISMES] == ("sécu", "CPAM")
    assert understood[f.MANDAT] == ("texto", "SMS")


def test_unknown_organisation_gets_the_suggestions_of_the_territory() -> None:
    text = WHOLE.replace("organismes : CAF", "organismes : CAFF").replace("12/13", "12/03")
    result = evaluate(
        DraftFields().merged(read_fields(text)),
        today=TODAY,
        vocabulary=vocabulary(suggest_organisations=lambda text, where: ["CAF"]),
    )
    (problem,) = result.problems
    assert problem.field == f.ORGANISMES
    assert (
        "« CAFF » est inconnu" in problem.message
        and "disponibles dans le 95 : CAF" in problem.message
    )


def test_a_category_written_as_organisation_is_taken_as_the_category() -> None:
    text = WHOLE.replace("organismes : CAF", "organismes : logement").replace("12/13", "12/03")
    result = evaluate(DraftFields().merged(read_fields(text)), today=TODAY, vocabulary=vocabulary())
    assert result.form is not None
    assert result.form.organisations == () and result.form.categorie == "Logement"


def test_required_identifiers_come_from_the_vocabulary() -> None:
    text = WHOLE.replace("12/13", "12/03")
    vocab = vocabulary(required_identifiers=lambda ids: {f.NIR: "pour la CPAM"} if ids else {})
    result = evaluate(DraftFields().merged(read_fields(text)), today=TODAY, vocabulary=vocab)
    (problem,) = result.problems
    assert problem.field == f.NIR and "obligatoire pour la CPAM" in problem.message


# --- the template in Element's composer ----------------------------------------------
# Element Web renders what is typed or pasted in its composer with commonmark.js, and
# sends plain text when the document holds nothing but paragraphs, text and line
# breaks. commonmark.py is a port of commonmark.js: same parser, same node types.

_PLAIN = {"document", "paragraph", "text", "softbreak", "linebreak"}


def _node_types(text: str) -> set[str]:
    walker = commonmark.Parser().parse(text).walker()
    found = set()
    event = walker.nxt()
    while event is not None:
        found.add(event["node"].t)
        event = walker.nxt()
    return found


def test_old_template_became_headings_in_element() -> None:
    # What the review saw: the « # » explanation lines are headings for CommonMark.
    assert "heading" in _node_types("# Code du département où vit l'usager.\nterritoire :")


def test_the_blank_template_is_plain_text_for_elements_markdown() -> None:
    assert _node_types(f.FORM_TEMPLATE) <= _PLAIN
    html = commonmark.commonmark(f.FORM_TEMPLATE)
    assert "<h1>" not in html and "<ul>" not in html and "<blockquote>" not in html


def test_a_filled_form_and_a_draft_are_plain_text_too() -> None:
    filled = f.FORM_TEMPLATE.replace("territoire :", "territoire : Val-d'Oise").replace(
        "nom :", "nom : Dupontel"
    )
    assert _node_types(filled) <= _PLAIN
    draft = DraftFields().merged(read_fields(WHOLE))
    assert _node_types(f.render_draft(draft)) <= _PLAIN


def test_old_forms_with_hash_lines_are_still_read() -> None:
    old = "# Code du département.\n" + WHOLE.replace("12/13", "12/03").replace(
        "description :", "# Décrivez la situation.\ndescription :"
    )
    result = evaluate(DraftFields().merged(read_fields(old)), today=TODAY, vocabulary=vocabulary())
    assert result.form is not None
    assert result.form.description == "Le versement est suspendu."
