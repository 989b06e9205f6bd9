"""« Mes demandes »: one agent's demandes at a glance, with filters (pure).

Administration+'s main screen was a board of the agent's demandes with filters, counts
and search. Here it is a command's answer (`!mesdemandes`): one line per demande with
its reference, status, organisations, age, who is expected to act, a late marker and
a link that opens its room.

Filters are plain words, in any order and any case or accents:
  - a status: « nouvelle », « en cours » (or « encours »), « traitée », « clôturée »
    (or « archive »), and « ouvertes » for every status but clôturée;
  - « retard » (or « en retard », « retards »): only the late ones;
  - a département by code or name (« 95 », « Val d'Oise »);
  - any other word: text searched in the reference, the organisations and the groups,
    and — only when the caller reads the answer alone (the aidant's own encrypted
    direct chat) — in the usager's name (`private_text`).
Several words of one kind widen the choice (« nouvelle traitée »); different kinds
narrow it (« traitée 95 »).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

from bot.domain.model import Status
from bot.domain.policies import fold

MATRIX_TO = "https://matrix.to/#/"
MAX_ROWS = 50

_STATUS_WORDS: Mapping[str, frozenset[Status]] = {
    "nouvelle": frozenset({Status.NOUVELLE}),
    "nouvelles": frozenset({Status.NOUVELLE}),
    "en cours": frozenset({Status.EN_COURS}),
    "encours": frozenset({Status.EN_COURS}),
    "traitee": frozenset({Status.TRAITEE}),
    "traitees": frozenset({Status.TRAITEE}),
    "cloturee": frozenset({Status.CLOTUREE}),
    "cloturees": frozenset({Status.CLOTUREE}),
    "archive": frozenset({Status.CLOTUREE}),
    "archives": frozenset({Status.CLOTUREE}),
    "ouverte": frozenset({Status.NOUVELLE, Status.EN_COURS, Status.TRAITEE}),
    "ouvertes": frozenset({Status.NOUVELLE, Status.EN_COURS, Status.TRAITEE}),
}
_LATE_WORDS = frozenset({"retard", "retards", "en retard"})


@dataclass(frozen=True, slots=True)
class BoardFilter:
    statuses: frozenset[Status] = frozenset()
    late_only: bool = False
    territoires: frozenset[str] = frozenset()
    words: tuple[str, ...] = ()  # folded

    @property
    def empty(self) -> bool:
        return not (self.statuses or self.late_only or self.territoires or self.words)

    def describe(self) -> str:
        parts = [s.label for s in Status if s in self.statuses]
        if self.late_only:
            parts.append("en retard")
        parts += sorted(self.territoires)
        parts += [f"« {w} »" for w in self.words]
        return ", ".join(parts)


def parse_filter(text: str, departement_of: Callable[[str], str | None]) -> BoardFilter:
    """The filter typed after `!mesdemandes`; `departement_of` maps a code or a name to a
    département code (None when it is not one)."""
    tokens = fold(text).split()
    statuses: set[Status] = set()
    territoires: set[str] = set()
    words: list[str] = []
    late = False
    i = 0
    while i < len(tokens):
        pair = " ".join(tokens[i : i + 2])
        if pair in _STATUS_WORDS or pair in _LATE_WORDS:
            statuses |= _STATUS_WORDS.get(pair, frozenset())
            late = late or pair in _LATE_WORDS
            i += 2
            continue
        # Département names run up to four words (« Alpes de Haute Provence »).
        for size in (4, 3, 2):
            code = (
                departement_of(" ".join(tokens[i : i + size])) if i + size <= len(tokens) else None
            )
            if code is not None:
                territoires.add(code)
                i += size
                break
        else:
            token = tokens[i]
            if token in _STATUS_WORDS:
                statuses |= _STATUS_WORDS[token]
            elif token in _LATE_WORDS:
                late = True
            elif (code := departement_of(token)) is not None:
                territoires.add(code)
            else:
                words.append(token)
            i += 1
    return BoardFilter(frozenset(statuses), late, frozenset(territoires), tuple(words))


@dataclass(frozen=True, slots=True)
class BoardRow:
    reference: str
    status: Status
    territoire: str
    organisations: tuple[str, ...]  # display names
    created_at: datetime
    expected: str  # who is expected to act, in French
    mine: bool  # the caller is the one expected to act
    late: bool
    link: str | None
    # Folded text the filter searches: reference, organisations, groups.
    search_text: str = ""
    # Folded text searched only when the reader is alone with it (the usager's name).
    private_text: str = field(default="", repr=False)


def expected_actor(status: Status, *, caller_is_aidant: bool) -> tuple[str, bool]:
    """Who must act next, seen from the caller's side, and whether it is the caller."""
    if status is Status.TRAITEE:
        return ("clore ou répondre", True) if caller_is_aidant else ("l'aidant", False)
    if status is Status.CLOTUREE:
        return "personne", False
    if caller_is_aidant:
        return "l'organisme", False
    return "répondre", True


def room_link(room_id: str, client_url: str | None = None) -> str:
    """A link that opens the room: the configured client's, or matrix.to (any client)."""
    base = client_url or MATRIX_TO
    return base + quote(room_id, safe="!:")


def age(created_at: datetime, now: datetime) -> str:
    days = (now - created_at).days
    if days <= 0:
        return "aujourd'hui"
    return "1 jour" if days == 1 else f"{days} jours"


def select(rows: Iterable[BoardRow], wanted: BoardFilter, *, private: bool) -> list[BoardRow]:
    """The rows the filter keeps, the most recent first; clôturées only when asked."""
    out = []
    for row in rows:
        if wanted.statuses:
            if row.status not in wanted.statuses:
                continue
        elif row.status is Status.CLOTUREE and not wanted.words:
            continue  # the archive is asked for by name (or found by a search)
        if wanted.late_only and not row.late:
            continue
        if wanted.territoires and row.territoire not in wanted.territoires:
            continue
        haystack = row.search_text + (" " + row.private_text if private else "")
        if any(w not in haystack for w in wanted.words):
            continue
        out.append(row)
    return sorted(out, key=lambda r: r.created_at, reverse=True)


@dataclass(frozen=True, slots=True)
class Board:
    text: str
    html: str


def render(rows: Sequence[BoardRow], wanted: BoardFilter, now: datetime, total: int) -> Board:
    """The answer to `!mesdemandes`: a count, then one line per demande."""
    shown = rows[:MAX_ROWS]
    late = sum(1 for r in rows if r.late)
    scope = f" ({wanted.describe()})" if not wanted.empty else " ouvertes"
    if not rows:
        none = (
            f"Aucune demande ({wanted.describe()})"
            if not wanted.empty
            else "Aucune demande ouverte"
        )
        text = f"{none}." + (
            f" Vous avez {total} demande(s) en tout : « !mesdemandes clôturée » montre "
            "les archives."
            if total
            else ""
        )
        return Board(text, f"<p>{html.escape(text)}</p>")
    head = f"Vos demandes{scope} : {len(rows)}" + (f", dont {late} en retard" if late else "")
    if len(rows) > len(shown):
        head += f" (les {len(shown)} plus récentes)"
    text_lines = [head + "."]
    items = []
    for r in shown:
        marker = " ⚠ EN RETARD" if r.late else ""
        orgs = ", ".join(r.organisations)
        who = f"à vous d'agir : {r.expected}" if r.mine else f"attend : {r.expected}"
        line = f"{r.reference} · {r.status.label}{marker} · {orgs} · {r.territoire} · "
        line += f"{age(r.created_at, now)} · {who}"
        text_lines.append(f"- {line}" + (f" — {r.link}" if r.link else ""))
        ref = html.escape(r.reference)
        anchor = f'<a href="{html.escape(r.link, quote=True)}">{ref}</a>' if r.link else ref
        items.append(f"<li>{anchor}{html.escape(line.removeprefix(r.reference))}</li>")
    text_lines.append("Filtres : statut, « retard », département, texte (!aide mesdemandes).")
    markup = (
        f"<p><strong>{html.escape(head)}.</strong></p><ul>{''.join(items)}</ul>"
        f"<p>{html.escape(text_lines[-1])}</p>"
    )
    return Board("\n".join(text_lines), markup)
