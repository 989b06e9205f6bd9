"""`!completer`: one field amended through the opening form's own validation."""

from __future__ import annotations

from datetime import date

from bot.domain import amend
from bot.domain.model import DemandeForm, Mandat, MandatType, Usager

FORM = DemandeForm(
    territoire="95",
    organisations=("caf",),
    categorie=None,
    objet="Blocage du versement de l'allocation logement",
    usager=Usager("Jeanne", "Dupontel", date(1961, 3, 12)),
    description="Le versement est suspendu.\nDepuis trois mois.",
    mandat=Mandat(MandatType.PAPIER, date(2026, 3, 1), True),
)


def run(line: str) -> amend.Amended | amend.Refused:
    return amend.amend(
        FORM,
        line,
        today=date(2026, 3, 10),
        known_departements={"95", "75"},
        organisation_lookup=lambda t: t.lower() if t.lower() in ("caf", "cpam") else None,
        categories=(),
    )


def test_a_date_of_birth_corrected() -> None:
    result = run("Date de naissance : 13/03/1961")
    assert isinstance(result, amend.Amended)
    assert result.form.usager.date_naissance == date(1961, 3, 13)
    assert result.change == amend.Change("date de naissance", "12/03/1961", "13/03/1961")
    assert result.form.description == FORM.description  # nothing else moves


def test_a_missing_nir_added_and_checked_like_at_the_opening() -> None:
    result = run("nir : 2 61 03 95 123 456 45")
    assert isinstance(result, amend.Amended)
    assert result.form.usager.nir is not None and result.change.before == ""
    wrong = run("NIR : 2 61 03 95 123 456 99")
    assert isinstance(wrong, amend.Refused) and any("NIR" in m for m in wrong.messages)


def test_the_description_replaced() -> None:
    result = run("description : Les pièces ont été renvoyées le 2 mars.")
    assert isinstance(result, amend.Amended)
    assert result.form.description == "Les pièces ont été renvoyées le 2 mars."
    assert result.form.mandat.attestation


def test_routing_fields_and_unknown_fields_refused() -> None:
    refused = run("organismes : CPAM")
    assert isinstance(refused, amend.Refused) and "!inviter" in refused.messages[0]
    unknown = run("couleur : bleu")
    assert isinstance(unknown, amend.Refused) and "n'existe pas" in unknown.messages[0]
    assert isinstance(run("sans deux-points"), amend.Refused)
