"""Finding the group or the colleague an agent means, as they typed it (pure).

`!inviter CPAM 95`, `!inviter cpam du val d'oise`, `!inviter « CAF 95 - Cergy »`: a
group is found by its name ignoring case, accents, punctuation and spacing, or by an
organisation and a département (code or name). An unknown name gets the few closest
groups *of the demande's département* — never the national list. A colleague is found
by email or by name (« Marc Petit », « petit marc »).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.domain.model import Agent, Group
from bot.domain.policies import fold

MAX_SUGGESTIONS = 5


def squeeze(text: str) -> str:
    """The comparison key: folded, without any spacing (« CAF95 » = « caf 95 »)."""
    return fold(text).replace(" ", "")


@dataclass(frozen=True, slots=True)
class Found:
    """What the text designates: one or more groups (« CPAM 95 » may be several)."""

    groups: tuple[Group, ...]


@dataclass(frozen=True, slots=True)
class NotFound:
    suggestions: tuple[Group, ...]  # the closest groups of the demande's département


def find_group(
    text: str,
    groups: Sequence[Group],
    *,
    territoire: str,
    organisation_of: Callable[[str], str | None],
    departement_of: Callable[[str], str | None],
) -> Found | NotFound:
    """`organisation_of` / `departement_of` map words to an organisation id / a
    département code (None when they are not one)."""
    key = squeeze(text)
    exact = tuple(g for g in groups if squeeze(g.name) == key)
    if exact:
        return Found(exact)
    words = fold(text).split()
    # « CPAM 95 », « CPAM Val d'Oise », « la CAF du 95 »: organisation then département.
    for split in range(len(words) - 1, 0, -1):
        head, tail = " ".join(words[:split]), " ".join(words[split:])
        dep = departement_of(tail)
        org = organisation_of(head) or organisation_of(_drop_articles(head))
        if dep is not None and org is not None:
            hits = tuple(g for g in groups if g.organisation_id == org and dep in g.departements)
            if hits:
                return Found(hits)
    # An organisation alone: its groups in the demande's département.
    org = organisation_of(text) or organisation_of(_drop_articles(fold(text)))
    if org is not None:
        hits = tuple(g for g in groups if g.organisation_id == org and territoire in g.departements)
        if hits:
            return Found(hits)
    return NotFound(suggest(text, groups, territoire=territoire))


def suggest(text: str, groups: Sequence[Group], *, territoire: str) -> tuple[Group, ...]:
    """The groups of the département, the closest to the text first."""
    local = [g for g in groups if territoire in g.departements]
    key = squeeze(text)

    def score(group: Group) -> float:
        name = squeeze(group.name)
        org = squeeze(group.organisation_id)
        ratio = difflib.SequenceMatcher(None, key, name).ratio()
        if key and (key in name or name in key or org in key):
            ratio += 1
        return ratio

    ranked = sorted(local, key=lambda g: (-score(g), g.name))
    return tuple(ranked[:MAX_SUGGESTIONS])


_ARTICLES = frozenset({"la", "le", "les", "l", "du", "de", "des", "d"})


def _drop_articles(text: str) -> str:
    return " ".join(w for w in text.split() if w not in _ARTICLES)


@dataclass(frozen=True, slots=True)
class Colleagues:
    agents: tuple[Agent, ...]  # one: found; several: say which; none: unknown


def find_colleague(text: str, agents: Sequence[Agent]) -> Colleagues:
    """By email (exact, case-insensitive) or by name, first-last or last-first."""
    raw = text.strip()
    if "@" in raw and not raw.startswith("@"):
        wanted = raw.casefold()
        return Colleagues(tuple(a for a in agents if a.email and a.email.casefold() == wanted))
    key = squeeze(raw)
    if not key:
        return Colleagues(())
    return Colleagues(
        tuple(
            a
            for a in agents
            if key
            in (
                squeeze(f"{a.first_name} {a.last_name}"),
                squeeze(f"{a.last_name} {a.first_name}"),
            )
        )
    )


def looks_like_email(text: str) -> bool:
    raw = text.strip()
    return "@" in raw and not raw.startswith("@") and " " not in raw
