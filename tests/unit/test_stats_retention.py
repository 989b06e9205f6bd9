"""Statistics, filters, the CSV export, retention decisions and the metrics text."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest

from bot.domain.calendar import PARIS
from bot.domain.metrics import MetricsSnapshot, render_prometheus
from bot.domain.model import Status, StatusTimes, Usefulness
from bot.domain.retention import (
    RetainedAttachment,
    RetainedDemande,
    RetentionRules,
    add_months,
    plan,
)
from bot.domain.stats import (
    EXPORT_COLUMNS,
    DemandeFilter,
    DemandeStat,
    FilterError,
    compute,
    export_csv,
    parse_filter,
    stats_rows,
)

TODAY = date(2026, 3, 20)


def paris(y: int, m: int, d: int, h: int = 10) -> datetime:
    return datetime(y, m, d, h, tzinfo=PARIS).astimezone(UTC)


def _filter(text: str) -> DemandeFilter:
    orgs = {"caf": "caf", "cpam": "cpam"}
    return parse_filter(
        text,
        today=TODAY,
        find_organisation=lambda t: orgs.get(t.lower()),
        known_territoire=lambda t: t if t in ("95", "2A") else None,
    )


def test_filters() -> None:
    f = _filter("statut=en_cours territoire:95 organisation=CAF du=01/03/2026 au=2026-03-31")
    assert f == DemandeFilter(
        Status.EN_COURS, False, "95", "caf", date(2026, 3, 1), date(2026, 3, 31)
    )
    assert _filter("en retard").late
    assert _filter("periode=2026-02") == DemandeFilter(
        start=date(2026, 2, 1), end=date(2026, 2, 28)
    )
    assert _filter("periode=2025").end == date(2025, 12, 31)
    assert _filter("periode=7j") == DemandeFilter(start=date(2026, 3, 14), end=TODAY)
    assert _filter("statut=traitée").status is Status.TRAITEE
    assert _filter("") == DemandeFilter()
    assert "territoire 95" in _filter("territoire=95").describe()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("statut=perdue", "Statut inconnu"),
        ("couleur=bleu", "Filtre inconnu"),
        ("n'importe", "non compris"),
        ("territoire=99", "Département inconnu"),
        ("organisation=NASA", "Organisation inconnue"),
        ("du=31/02/2026", "n'existe pas"),
        ("du=hier", "n'est pas une date"),
        ("du=10/03/2026 au=01/03/2026", "après"),
        ("periode=bientot", "non comprise"),
        ("statut=", "attend une valeur"),
    ],
)
def test_bad_filters(text: str, error: str) -> None:
    with pytest.raises(FilterError, match=error):
        _filter(text)


def _stat(ref: str, created: datetime, **kw: object) -> DemandeStat:
    times = StatusTimes(
        created_at=created,
        first_answer_at=kw.pop("first", None),  # type: ignore[arg-type]
        treated_at=kw.pop("treated", None),  # type: ignore[arg-type]
        closed_at=kw.pop("closed", None),  # type: ignore[arg-type]
    )
    values: dict[str, object] = {
        "territoire": "95",
        "organisations": ("caf",),
        "status": Status.NOUVELLE,
        "usefulness": None,
        "late": False,
        "aidant_group": "France services Cergy",
        "target_groups": ("CAF 95",),
    }
    values.update(kw)
    return DemandeStat(reference=ref, times=times, **values)  # type: ignore[arg-type]


def test_stats() -> None:
    t = paris(2026, 3, 2)
    demandes = [
        # resolved in 2 days, closed useful
        _stat(
            "A-1",
            t,
            status=Status.CLOTUREE,
            first=t + timedelta(hours=4),
            treated=t + timedelta(days=2),
            closed=t + timedelta(days=3),
            usefulness=Usefulness.UTILE,
        ),
        # resolved in 10 days
        _stat(
            "A-2",
            t,
            status=Status.TRAITEE,
            first=t + timedelta(hours=10),
            treated=t + timedelta(days=10),
        ),
        # unresolved, past 7 days: a definite "no"
        _stat("A-3", t, status=Status.NOUVELLE, late=True),
        # unresolved, recent: unknown
        _stat("A-4", paris(2026, 3, 18), status=Status.NOUVELLE),
        # another territory and organisation
        _stat("A-5", t, territoire="2A", organisations=("cpam",), status=Status.NOUVELLE),
        # opened before the period, closed inside it
        _stat(
            "A-6",
            paris(2026, 2, 20),
            status=Status.CLOTUREE,
            treated=paris(2026, 2, 21),
            closed=paris(2026, 3, 5),
            usefulness=Usefulness.INUTILE,
        ),
    ]
    now = paris(2026, 3, 20)
    s = compute(demandes, _filter("periode=2026-03 territoire=95"), now)
    assert s.opened == 4 and s.closed == 2
    assert (s.resolved_within_7, s.resolved_known) == (1, 3)
    assert s.median_first_answer_hours == 7.0
    assert s.median_resolution_hours == 6 * 24.0
    assert s.usefulness[Usefulness.UTILE] == 1 and s.usefulness[Usefulness.INUTILE] == 1
    assert s.late == 1
    labels = dict(stats_rows(s))
    assert labels["Résolues en moins de 7 jours"] == "33 % (1/3)"
    assert compute(demandes, _filter("organisation=cpam"), now).opened == 1
    empty = compute([], DemandeFilter(), now)
    assert (
        empty.share_resolved_7 is None
        and dict(stats_rows(empty))["Délai médian de résolution"] == "—"
    )


def test_export_has_the_administration_plus_columns_and_neutralises_formulas() -> None:
    t = paris(2026, 3, 2)
    rows = [
        _stat(
            "A-1",
            t,
            status=Status.CLOTUREE,
            first=t + timedelta(hours=1, minutes=30),
            treated=t + timedelta(days=1),
            closed=t + timedelta(days=2),
            usefulness=Usefulness.NESAISPAS,
            target_groups=("=HYPERLINK(1)", "CPAM 95"),
        ),
        _stat("A-2", t),
    ]
    data = export_csv(rows)
    assert data.startswith("\ufeff".encode())
    table = list(csv.reader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    assert tuple(table[0]) == EXPORT_COLUMNS
    first = dict(zip(EXPORT_COLUMNS, table[1], strict=True))
    assert first["Id"] == "A-1" and first["État"] == "clôturée"
    assert first["Date de création"] == "02/03/2026 10:00"
    assert first["Groupes des invités"] == "'=HYPERLINK(1), CPAM 95"
    assert first["Utile"] == "Je ne sais pas"
    assert first["Délai de première réponse (heures)"] == "1,5"
    assert first["Délai de clôture (heures)"] == "48,0"
    second = dict(zip(EXPORT_COLUMNS, table[2], strict=True))
    assert second["Date de clôture"] == "" and second["Délai de clôture (heures)"] == ""


def test_add_months_clamps() -> None:
    assert add_months(datetime(2026, 8, 31, tzinfo=UTC), 6) == datetime(2027, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2026, 1, 15, tzinfo=UTC), 13) == datetime(2027, 2, 15, tzinfo=UTC)


def test_retention_plan() -> None:
    now = paris(2026, 9, 10)
    rules = RetentionRules()
    demandes = [
        RetainedDemande("A-old", Status.CLOTUREE, paris(2026, 3, 9), "!a:x", wiped=False),
        RetainedDemande("A-young", Status.CLOTUREE, paris(2026, 3, 11), "!b:x", wiped=False),
        RetainedDemande("A-done", Status.CLOTUREE, paris(2026, 1, 1), "!c:x", wiped=True),
        RetainedDemande("A-open", Status.EN_COURS, None, "!d:x", wiped=False),
    ]
    files = [
        RetainedAttachment("A-young", "!b:x", "$1", "mxc://x/1", now - timedelta(days=16)),
        RetainedAttachment("A-young", "!b:x", "$2", "mxc://x/2", now - timedelta(days=14)),
        RetainedAttachment("A-old", "!a:x", "$3", "mxc://x/3", now - timedelta(days=1)),
    ]
    p = plan(demandes, files, now, rules)
    assert [d.reference for d in p.wipe] == ["A-old"]
    assert {a.event_id for a in p.attachments} == {"$1", "$3"}
    assert p.audit_before == now - timedelta(days=365)
    assert not p.empty
    assert plan([], [], now, rules).empty


def test_metrics_text() -> None:
    text = render_prometheus(
        MetricsSnapshot(
            demandes_by_status={Status.NOUVELLE: 2, Status.CLOTUREE: 5},
            share_resolved_7_days=0.75,
            late_demandes=1,
            outbox_pending=3,
            outbox_oldest_age_seconds=12.5,
            delivery_failures=0,
            intruders_removed=4,
            undecryptable_events=0,
        )
    )
    assert 'aplus_demandes{status="nouvelle"} 2' in text
    assert 'aplus_demandes{status="en_cours"} 0' in text
    assert "aplus_resolved_within_7_days_ratio 0.75" in text
    assert "aplus_outbox_oldest_age_seconds 12.5" in text
    assert "# TYPE aplus_intruders_removed gauge" in text and text.endswith("\n")


def test_only_the_demandes_own_media_may_be_deleted() -> None:
    from bot.domain.retention import may_delete_media

    bot, alice = "@bot:hs", "@alice:hs"
    ok = {"bot_user_id": bot, "participants": [alice], "other_references": []}
    assert may_delete_media(uploader=bot, **ok) is None  # type: ignore[arg-type]
    assert may_delete_media(uploader=alice, **ok) is None  # type: ignore[arg-type]
    assert may_delete_media(uploader="@victim:hs", **ok) == "not_uploaded_by_a_participant"  # type: ignore[arg-type]
    assert may_delete_media(uploader=None, **ok) == "not_local"  # type: ignore[arg-type]
    assert (
        may_delete_media(
            uploader=alice, bot_user_id=bot, participants=[alice], other_references=["A-1"]
        )
        == "referenced_elsewhere"
    )


def test_procedure_standard_is_counted_and_exported_as_not_pertinent() -> None:
    t = paris(2026, 3, 2)
    rows = [_stat("A-1", t, procedure_standard=True), _stat("A-2", t), _stat("A-3", t)]
    stats = compute(rows, DemandeFilter(), t + timedelta(days=1))
    assert stats.procedure_standard == 1
    assert ("Procédure standard (non pertinentes)", "1") in stats_rows(stats)
    table = list(csv.reader(io.StringIO(export_csv(rows).decode("utf-8-sig")), delimiter=";"))
    pertinent = [dict(zip(EXPORT_COLUMNS, r, strict=True))["Pertinente"] for r in table[1:]]
    assert pertinent == ["Non", "Oui", "Oui"]
