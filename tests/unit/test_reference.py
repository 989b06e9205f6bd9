"""References and room names: stable spelling, never any usager data."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.domain.model import DemandeForm, Mandat, MandatType, Usager
from bot.domain.reference import format_reference, parse_reference, room_name


def test_format_reference() -> None:
    assert format_reference(2026, 42) == "A-2026-000042"
    assert format_reference(2026, 1_234_567) == "A-2026-1234567"


@pytest.mark.parametrize(("year", "seq"), [(999, 1), (10_000, 1), (2026, 0), (2026, -3)])
def test_format_reference_refuses_out_of_range(year: int, seq: int) -> None:
    with pytest.raises(ValueError):
        format_reference(year, seq)


@given(st.integers(1000, 9999), st.integers(1, 10**8))
def test_parse_inverts_format(year: int, seq: int) -> None:
    assert parse_reference(format_reference(year, seq)) == (year, seq)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A-2026-000042", (2026, 42)),
        ("  a-2026-000042\n", (2026, 42)),
        ("A-2026-42", None),
        ("A-2026-0000042", None),  # would alias A-2026-000042
        ("A-2026-000000", None),
        ("B-2026-000042", None),
        ("A-2026-000042x", None),
        ("Demande A-2026-000042", None),
        ("", None),
    ],
)
def test_parse_reference(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_reference(text) == expected


def test_room_name() -> None:
    assert room_name("A-2026-000042", ["CAF"], "95") == "Demande A-2026-000042 · CAF · 95"
    assert (
        room_name("A-2026-000042", ["CAF", "CPAM", "CAF"], "2A")
        == "Demande A-2026-000042 · CAF / CPAM · 2A"
    )
    assert room_name("A-2026-000042", [], "974") == "Demande A-2026-000042 · 974"
    assert room_name("A-2026-000042", ["France Rénov'"], "01").endswith("France Rénov' · 01")


def test_room_name_never_carries_personal_data() -> None:
    form = DemandeForm(
        territoire="95",
        organisations=("caf",),
        categorie=None,
        objet="Rupture de droits",
        usager=Usager(
            prenom="Jeanne",
            nom="Dupont",
            date_naissance=date(1980, 3, 5),
            nir="280039512345684",
            numero_allocataire_caf="1234567",
            nif="0123456789012",
            adresse="12 rue des Lilas",
            telephone="06 12 34 56 78",
        ),
        description="Madame Dupont n'a plus de versement.",
        mandat=Mandat(MandatType.PAPIER, date(2026, 3, 10), True),
    )
    name = room_name("A-2026-000042", ["CAF"], form.territoire)
    personal = [
        form.usager.prenom,
        form.usager.nom,
        "1980",
        "05/03",
        "2800395",
        "1234567",
        "0123456789012",
        "Lilas",
        "06 12",
        "Rupture",
    ]
    for value in personal:
        assert value.lower() not in name.lower()
    # Anything that does not look like a catalogue name or a code is refused outright.
    with pytest.raises(ValueError):
        room_name("A-2026-000042", ["Dossier de Jeanne Dupont né le 05/03/1980"], "95")
    with pytest.raises(ValueError):
        room_name("A-2026-000042", ["CAF"], "Jeanne Dupont")
    with pytest.raises(ValueError):
        room_name("Jeanne Dupont", ["CAF"], "95")
