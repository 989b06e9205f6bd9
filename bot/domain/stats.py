"""Statistics, filters and the CSV export of demandes metadata (pure).

Operators see metadata only: a `DemandeStat` carries no objet, no usager, no
message; the export has exactly the Administration+ columns.

Filters are typed as words, in any order:
``statut=en_cours territoire=95 organisation=CAF du=01/01/2026 au=31/03/2026``,
``periode=2026-03`` (a month), ``periode=2026`` (a year), ``periode=30j`` (the
last 30 days), and the bare word ``retard``. ``:`` works as well as ``=``.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from bot.domain.calendar import PARIS, paris_date
from bot.domain.model import STATUS_LABELS, Status, StatusTimes, Usefulness
from bot.domain.policies import fold
from bot.domain.status import resolved_at, resolved_within

HEADLINE_DAYS = 7


class FilterError(ValueError):
    """A filter the operator typed cannot be understood (French message)."""


@dataclass(frozen=True, slots=True)
class DemandeFilter:
    status: Status | None = None
    late: bool = False
    territoire: str | None = None
    organisation: str | None = None  # organisation id
    start: date | None = None  # creation date, Paris time, inclusive
    end: date | None = None  # inclusive

    def describe(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(f"statut {self.status.label}")
        if self.late:
            parts.append("en retard")
        if self.territoire:
            parts.append(f"territoire {self.territoire}")
        if self.organisation:
            parts.append(f"organisation {self.organisation}")
        if self.start or self.end:
            start = self.start.strftime("%d/%m/%Y") if self.start else "…"
            end = self.end.strftime("%d/%m/%Y") if self.end else "…"
            parts.append(f"ouvertes du {start} au {end}")
        return ", ".join(parts) if parts else "toutes les demandes"


_STATUS_WORDS = {fold(s.value): s for s in Status} | {fold(s.label): s for s in Status}
_STATUS_WORDS |= {
    "en cours": Status.EN_COURS,
    "cloturee": Status.CLOTUREE,
    "close": Status.CLOTUREE,
}
_KEYS = {
    "statut": "statut",
    "etat": "statut",
    "territoire": "territoire",
    "departement": "territoire",
    "dep": "territoire",
    "organisation": "organisation",
    "org": "organisation",
    "du": "du",
    "depuis": "du",
    "au": "au",
    "jusqu au": "au",
    "periode": "periode",
}
_LATE_WORDS = frozenset({"retard", "en retard", "retards"})
_DATE_FR = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})\Z")
_DATE_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})\Z")
_MONTH = re.compile(r"(?:(\d{4})-(\d{1,2})|(\d{1,2})/(\d{4}))\Z")
_YEAR = re.compile(r"(\d{4})\Z")
_DAYS = re.compile(r"(\d{1,4})\s*j(?:ours?)?\Z")


def parse_filter(
    text: str | None,
    *,
    today: date,
    find_organisation: Callable[[str], str | None],
    known_territoire: Callable[[str], str | None],
) -> DemandeFilter:
    """Words → filter. `find_organisation` / `known_territoire` give the canonical id or None."""
    values: dict[str, object] = {}
    for word in _words(text or ""):
        if fold(word) in _LATE_WORDS:
            values["late"] = True
            continue
        key, sep, value = _split(word)
        if not sep:
            raise FilterError(
                f"Filtre « {word} » non compris : écrivez par exemple statut=en_cours, "
                "territoire=95, organisation=CAF, periode=2026-03, du=01/03/2026, au=31/03/2026 "
                "ou retard."
            )
        name = _KEYS.get(fold(key))
        if name is None:
            raise FilterError(
                f"Filtre inconnu « {key} » : possibles statut, territoire, organisation, "
                "periode, du, au, retard."
            )
        if not value.strip():
            raise FilterError(f"Le filtre {key} attend une valeur.")
        if name == "statut":
            status = _STATUS_WORDS.get(fold(value))
            if status is None:
                names = ", ".join(s.value for s in Status)
                raise FilterError(f"Statut inconnu « {value} » : possibles {names}.")
            values["status"] = status
        elif name == "territoire":
            code = known_territoire(value)
            if code is None:
                raise FilterError(f"Département inconnu « {value} ».")
            values["territoire"] = code
        elif name == "organisation":
            org = find_organisation(value)
            if org is None:
                raise FilterError(f"Organisation inconnue « {value} » (voir !organisations).")
            values["organisation"] = org
        elif name == "du":
            values["start"] = _date(value)
        elif name == "au":
            values["end"] = _date(value)
        else:
            values["start"], values["end"] = _period(value, today)
    result = DemandeFilter(**values)  # type: ignore[arg-type]
    if result.start and result.end and result.start > result.end:
        raise FilterError("La date de début est après la date de fin.")
    return result


def _words(text: str) -> list[str]:
    # `en retard` and `jusqu'au` are two words that mean one thing.
    text = re.sub(r"(?i)\ben\s+retard\b", "retard", text)
    text = re.sub(r"(?i)\bjusqu'au\b", "au", text)
    return text.split()


def _split(word: str) -> tuple[str, str, str]:
    for sep in ("=", ":"):
        if sep in word:
            key, _, value = word.partition(sep)
            return key, sep, value
    return word, "", ""


def _date(text: str) -> date:
    try:
        if m := _DATE_FR.match(text):
            return date(int(m[3]), int(m[2]), int(m[1]))
        if m := _DATE_ISO.match(text):
            return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise FilterError(f"La date « {text} » n'existe pas.") from None
    raise FilterError(f"« {text} » n'est pas une date : écrivez JJ/MM/AAAA ou AAAA-MM-JJ.")


def _period(text: str, today: date) -> tuple[date, date]:
    if m := _DAYS.match(text.strip().lower()):
        days = int(m[1])
        if days < 1:
            raise FilterError("Une période compte au moins un jour.")
        return today - timedelta(days=days - 1), today
    if m := _MONTH.match(text):
        year, month = (int(m[1]), int(m[2])) if m[1] else (int(m[4]), int(m[3]))
        if not 1 <= month <= 12:
            raise FilterError(f"Mois invalide dans « {text} ».")
        first = date(year, month, 1)
        last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        return first, last
    if m := _YEAR.match(text):
        return date(int(m[1]), 1, 1), date(int(m[1]), 12, 31)
    raise FilterError(
        f"Période « {text} » non comprise : écrivez 2026-03 (un mois), 2026 (une année) "
        "ou 30j (les 30 derniers jours)."
    )


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class DemandeStat:
    """One demande as statistics see it: metadata only."""

    reference: str
    territoire: str
    organisations: tuple[str, ...]
    status: Status
    times: StatusTimes
    usefulness: Usefulness | None
    late: bool
    aidant_group: str | None = None
    target_groups: tuple[str, ...] = field(default_factory=tuple)
    # An instructeur said it could have gone through the usual channel (not pertinent).
    procedure_standard: bool = False


def matches(d: DemandeStat, f: DemandeFilter) -> bool:
    if f.status is not None and d.status is not f.status:
        return False
    if f.late and not d.late:
        return False
    if f.territoire is not None and d.territoire != f.territoire:
        return False
    if f.organisation is not None and f.organisation not in d.organisations:
        return False
    created = paris_date(d.times.created_at)
    if f.start is not None and created < f.start:
        return False
    return not (f.end is not None and created > f.end)


def select(demandes: Iterable[DemandeStat], f: DemandeFilter) -> list[DemandeStat]:
    return [d for d in demandes if matches(d, f)]


def _in_period(moment: datetime | None, f: DemandeFilter) -> bool:
    if moment is None:
        return False
    day = paris_date(moment)
    return (f.start is None or day >= f.start) and (f.end is None or day <= f.end)


@dataclass(frozen=True, slots=True)
class Stats:
    opened: int
    closed: int
    resolved_within_7: int
    resolved_known: int  # denominator of the headline share
    median_first_answer_hours: float | None
    median_resolution_hours: float | None
    usefulness: dict[Usefulness, int]
    late: int
    by_status: dict[Status, int]
    procedure_standard: int = 0

    @property
    def share_resolved_7(self) -> float | None:
        if not self.resolved_known:
            return None
        return self.resolved_within_7 / self.resolved_known


def _hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600


def compute(demandes: Iterable[DemandeStat], f: DemandeFilter, now: datetime) -> Stats:
    """Opened = created in the period; closed = closed in the period (same other filters)."""
    everything = list(demandes)
    without_period = DemandeFilter(f.status, f.late, f.territoire, f.organisation)
    scope = [d for d in everything if matches(d, without_period)]
    opened = [d for d in scope if matches(d, f)]
    closed = [d for d in scope if d.status is Status.CLOTUREE and _in_period(d.times.closed_at, f)]
    outcomes = [resolved_within(d.times, HEADLINE_DAYS, now=now) for d in opened]
    known = [o for o in outcomes if o is not None]
    first_answers = [
        _hours(d.times.first_answer_at - d.times.created_at)
        for d in opened
        if d.times.first_answer_at is not None
    ]
    resolutions = []
    for d in opened:
        done = resolved_at(d.times)
        if done is not None:
            resolutions.append(_hours(done - d.times.created_at))
    usefulness = {u: 0 for u in Usefulness}
    for d in closed:
        if d.usefulness is not None:
            usefulness[d.usefulness] += 1
    by_status = {s: 0 for s in Status}
    for d in opened:
        by_status[d.status] += 1
    return Stats(
        opened=len(opened),
        closed=len(closed),
        resolved_within_7=sum(1 for o in known if o),
        resolved_known=len(known),
        median_first_answer_hours=statistics.median(first_answers) if first_answers else None,
        median_resolution_hours=statistics.median(resolutions) if resolutions else None,
        usefulness=usefulness,
        late=sum(1 for d in opened if d.late),
        by_status=by_status,
        procedure_standard=sum(1 for d in opened if d.procedure_standard),
    )


USEFULNESS_LABELS: dict[Usefulness, str] = {
    Usefulness.UTILE: "Oui",
    Usefulness.NESAISPAS: "Je ne sais pas",
    Usefulness.INUTILE: "Non",
}


def fmt_hours(hours: float | None) -> str:
    if hours is None:
        return "—"
    if hours < 48:
        return f"{hours:.1f} h".replace(".", ",")
    return f"{hours / 24:.1f} j".replace(".", ",")


def fmt_share(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.0f} %"


def stats_rows(s: Stats) -> list[tuple[str, str]]:
    """The stats as (label, value) lines, for the table answered in the room."""
    rows = [
        ("Demandes ouvertes", str(s.opened)),
        ("Demandes clôturées", str(s.closed)),
        (
            f"Résolues en moins de {HEADLINE_DAYS} jours",
            f"{fmt_share(s.share_resolved_7)} ({s.resolved_within_7}/{s.resolved_known})",
        ),
        ("Délai médian de première réponse", fmt_hours(s.median_first_answer_hours)),
        ("Délai médian de résolution", fmt_hours(s.median_resolution_hours)),
    ]
    rows += [(f"Réponse utile : {USEFULNESS_LABELS[u]}", str(n)) for u, n in s.usefulness.items()]
    rows.append(("En retard", str(s.late)))
    rows.append(("Procédure standard (non pertinentes)", str(s.procedure_standard)))
    rows += [(f"Statut {STATUS_LABELS[st]}", str(n)) for st, n in s.by_status.items()]
    return rows


# --------------------------------------------------------------------------- CSV export

EXPORT_COLUMNS: tuple[str, ...] = (
    "Id",
    "État",
    "Date de création",
    "Groupes du demandeur",
    "Groupes des invités",
    "Territoire",
    "Date de clôture",
    "Pertinente",
    "Utile",
    "Délai de première réponse (heures)",
    "Délai de clôture (heures)",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    # A spreadsheet runs a cell that starts like a formula: neutralise it.
    return "'" + value if value.startswith(_FORMULA_START) else value


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")


def _delay(start: datetime, end: datetime | None) -> str:
    return "" if end is None else f"{_hours(end - start):.1f}".replace(".", ",")


def export_csv(demandes: Sequence[DemandeStat]) -> bytes:
    """The Administration+ metadata export: `;`-separated UTF-8 with a BOM (French Excel)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for d in demandes:
        closed = d.times.closed_at if d.status is Status.CLOTUREE else None
        writer.writerow(
            [
                _cell(d.reference),
                d.status.label,
                _when(d.times.created_at),
                _cell(d.aidant_group or ""),
                _cell(", ".join(d.target_groups)),
                d.territoire,
                _when(closed),
                # Administration+'s « pertinente »: not when an instructeur flagged the
                # demande « procédure standard » (`!procedurestandard`).
                "Non" if d.procedure_standard else "Oui",
                USEFULNESS_LABELS[d.usefulness] if d.usefulness and closed else "",
                _delay(d.times.created_at, d.times.first_answer_at),
                _delay(d.times.created_at, closed),
            ]
        )
    return ("\ufeff" + out.getvalue()).encode("utf-8")
