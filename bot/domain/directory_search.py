"""Finding agents and groups in a national directory (pure).

A search is a few words typed by an operator: each must begin a word of what is known of
the agent (first and last name, email, Matrix ID, group name), ignoring case, accents and
punctuation, so « dup » finds Dupont and « sophie.petit@caf95.fr » finds her.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bot.domain.model import Agent, Group
from bot.domain.policies import fold

_QUOTES = "\"'«»“”"


def search_words(text: str) -> tuple[str, ...]:
    return tuple(fold(text).split())


def unquoted(text: str) -> str:
    """What an operator typed, without the quotes around it and extra spaces."""
    return " ".join(text.strip().strip(_QUOTES).split())


def _matches(words: Sequence[str], known: Iterable[str | None]) -> bool:
    haystack = fold(" ".join(v for v in known if v)).split()
    return all(any(h.startswith(w) for h in haystack) for w in words)


def agent_matches(agent: Agent, group: Group | None, words: Sequence[str]) -> bool:
    known = (agent.first_name, agent.last_name, agent.email, agent.matrix_id)
    return _matches(words, (*known, group.name if group else None))


def group_matches(group: Group, organisation: str, words: Sequence[str]) -> bool:
    return _matches(words, (group.name, organisation, *sorted(group.departements), group.bal))
