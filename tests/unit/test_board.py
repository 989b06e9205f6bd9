"""« Mes demandes »: parsing the filters, selecting and rendering the rows (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.domain import board
from bot.domain.model import Status
from bot.domain.policies import fold

NOW = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
DEPARTEMENTS = {"95": "Val-d'Oise", "75": "Paris", "04": "Alpes-de-Haute-Provence"}


def departement_of(text: str) -> str | None:
    code = text.strip().upper()
    if code in DEPARTEMENTS:
        return code
    for c, name in DEPARTEMENTS.items():
        if fold(name) == fold(text):
            return c
    return None


def row(
    ref: str, status: Status, *, days: int = 1, late: bool = False, **kw: str
) -> board.BoardRow:
    expected, mine = board.expected_actor(status, caller_is_aidant=True)
    return board.BoardRow(
        reference=ref,
        status=status,
        territoire=kw.get("territoire", "95"),
        organisations=("CAF",),
        created_at=NOW - timedelta(days=days),
        expected=expected,
        mine=mine,
        late=late,
        link=board.room_link("!abc:example.org"),
        search_text=fold(f"{ref} caf {kw.get('group', 'CAF 95')}"),
        private_text=fold(kw.get("usager", "")),
    )


def test_filters_by_status_late_departement_and_text_in_any_order() -> None:
    f = board.parse_filter("Traitée en retard val d'oise Dupont", departement_of)
    assert f.statuses == {Status.TRAITEE}
    assert f.late_only
    assert f.territoires == {"95"}
    assert f.words == ("dupont",)


def test_status_words_accept_plurals_spaces_and_the_archive() -> None:
    assert board.parse_filter("en cours", departement_of).statuses == {Status.EN_COURS}
    assert board.parse_filter("ENCOURS", departement_of).statuses == {Status.EN_COURS}
    assert board.parse_filter("archives", departement_of).statuses == {Status.CLOTUREE}
    assert board.parse_filter("clôturée", departement_of).statuses == {Status.CLOTUREE}
    opened = board.parse_filter("ouvertes", departement_of).statuses
    assert opened == {Status.NOUVELLE, Status.EN_COURS, Status.TRAITEE}
    assert board.parse_filter("nouvelle traitée", departement_of).statuses == {
        Status.NOUVELLE,
        Status.TRAITEE,
    }


def test_multi_word_departement_names() -> None:
    f = board.parse_filter("alpes de haute provence", departement_of)
    assert f.territoires == {"04"}
    assert f.words == ()
    assert board.parse_filter("75 95", departement_of).territoires == {"75", "95"}


def test_without_filter_closed_demandes_are_left_out() -> None:
    rows = [row("A-1", Status.NOUVELLE), row("A-2", Status.CLOTUREE)]
    kept = board.select(rows, board.BoardFilter(), private=False)
    assert [r.reference for r in kept] == ["A-1"]
    archive = board.select(rows, board.parse_filter("clôturée", departement_of), private=False)
    assert [r.reference for r in archive] == ["A-2"]


def test_late_and_territory_narrow_the_list() -> None:
    rows = [
        row("A-1", Status.NOUVELLE, late=True),
        row("A-2", Status.EN_COURS, territoire="75"),
        row("A-3", Status.NOUVELLE, territoire="75", late=True),
    ]
    late = board.select(rows, board.parse_filter("retard", departement_of), private=False)
    assert {r.reference for r in late} == {"A-1", "A-3"}
    paris_late = board.select(rows, board.parse_filter("retard 75", departement_of), private=False)
    assert [r.reference for r in paris_late] == ["A-3"]


def test_usager_name_is_searched_only_when_private() -> None:
    rows = [row("A-1", Status.NOUVELLE, usager="Jeanne Dupontel"), row("A-2", Status.NOUVELLE)]
    wanted = board.parse_filter("dupontel", departement_of)
    assert board.select(rows, wanted, private=False) == []
    assert [r.reference for r in board.select(rows, wanted, private=True)] == ["A-1"]


def test_text_searches_reference_and_groups_even_in_the_archive() -> None:
    rows = [row("A-2026-000042", Status.CLOTUREE, group="CPAM du Val-d'Oise")]
    assert board.select(rows, board.parse_filter("000042", departement_of), private=False)
    assert board.select(rows, board.parse_filter("cpam", departement_of), private=False)


def test_most_recent_first() -> None:
    rows = [row("A-1", Status.NOUVELLE, days=5), row("A-2", Status.NOUVELLE, days=1)]
    assert [r.reference for r in board.select(rows, board.BoardFilter(), private=False)] == [
        "A-2",
        "A-1",
    ]


def test_render_shows_each_field_and_the_link() -> None:
    rows = [row("A-1", Status.TRAITEE, days=3), row("A-2", Status.NOUVELLE, late=True)]
    shown = board.render(rows, board.BoardFilter(), NOW, total=2)
    assert "Vos demandes ouvertes : 2, dont 1 en retard." in shown.text
    assert "A-1 · traitée · CAF · 95 · 3 jours · à vous d'agir : clore ou répondre" in shown.text
    assert "A-2 · nouvelle ⚠ EN RETARD · CAF · 95 · 1 jour · attend : l'organisme" in shown.text
    assert "https://matrix.to/#/!abc:example.org" in shown.text
    assert '<a href="https://matrix.to/#/!abc:example.org">A-1</a>' in shown.html


def test_render_empty_points_to_the_archive() -> None:
    shown = board.render([], board.BoardFilter(), NOW, total=3)
    assert shown.text.startswith("Aucune demande ouverte. Vous avez 3 demande(s) en tout")
    assert "!mesdemandes clôturée" in shown.text


def test_expected_actor_from_each_side() -> None:
    assert board.expected_actor(Status.TRAITEE, caller_is_aidant=False) == ("l'aidant", False)
    assert board.expected_actor(Status.NOUVELLE, caller_is_aidant=False) == ("répondre", True)
    assert board.expected_actor(Status.CLOTUREE, caller_is_aidant=True) == ("personne", False)


def test_configured_client_url() -> None:
    link = board.room_link("!r:ex.org", "https://element.example/#/room/")
    assert link == "https://element.example/#/room/!r:ex.org"
