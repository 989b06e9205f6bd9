"""Closing a demande: the usefulness answer, in words, by a reaction or by a poll (pure).

One vocabulary everywhere: the notice asks « oui, non ou je ne sais pas », `!clore`
takes the same words (and the older ones: utile, nesaispas, inutile), a reaction on the
« traitée » notice (👍 oui, 👎 non, 🤷 je ne sais pas) and an answer to the poll the bot
posts with it (m.poll.start, MSC3381) close the demande just as `!clore` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.domain.dossier import USEFULNESS_LABELS
from bot.domain.model import Usefulness
from bot.domain.policies import fold

WORDS: Mapping[Usefulness, str] = USEFULNESS_LABELS  # oui, je ne sais pas, non
_ACCEPTED: Mapping[str, Usefulness] = {
    "oui": Usefulness.UTILE,
    "utile": Usefulness.UTILE,
    "o": Usefulness.UTILE,
    "non": Usefulness.INUTILE,
    "inutile": Usefulness.INUTILE,
    "n": Usefulness.INUTILE,
    "je ne sais pas": Usefulness.NESAISPAS,
    "ne sais pas": Usefulness.NESAISPAS,
    "nesaispas": Usefulness.NESAISPAS,
    "jsp": Usefulness.NESAISPAS,
    "jnsp": Usefulness.NESAISPAS,
    "sais pas": Usefulness.NESAISPAS,
}
REACTIONS: Mapping[str, Usefulness] = {
    "👍": Usefulness.UTILE,
    "👎": Usefulness.INUTILE,
    "🤷": Usefulness.NESAISPAS,
}
CHOICES = "oui, non ou je ne sais pas"
QUESTION = "La réponse est-elle utile pour l'usager ?"

POLL_START = "m.poll.start"
POLL_RESPONSES = frozenset({"m.poll.response", "org.matrix.msc3381.poll.response"})
_UNSTABLE_START = "org.matrix.msc3381.poll.start"
_UNSTABLE_TEXT = "org.matrix.msc1767.text"


def usefulness_of(text: str) -> Usefulness | None:
    """`!clore`'s answer, in any case or accents, with or without the apostrophe."""
    return _ACCEPTED.get(fold(text))


def of_reaction(key: str) -> Usefulness | None:
    # Element may add the emoji variation selector (U+FE0F) or a skin tone.
    bare = "".join(c for c in key if c != "\ufe0f" and not "\U0001f3fb" <= c <= "\U0001f3ff")
    return REACTIONS.get(bare)


def poll_content(reference: str) -> dict[str, Any]:
    """The usefulness poll: the spec's m.poll (Matrix 1.7) and MSC3381's keys, which
    Element reads, side by side, with a text fallback for clients without polls."""
    answers = [(u.value, WORDS[u].capitalize()) for u in WORDS]
    fallback = f"{QUESTION} (demande {reference}) — " + ", ".join(
        f"{i}. {label}" for i, (_, label) in enumerate(answers, 1)
    )
    return {
        "m.text": [{"body": fallback}],
        "m.poll": {
            "kind": "m.disclosed",
            "max_selections": 1,
            "question": {"m.text": [{"body": QUESTION}]},
            "answers": [{"m.id": aid, "m.text": [{"body": label}]} for aid, label in answers],
        },
        _UNSTABLE_START: {
            "kind": "org.matrix.msc3381.poll.disclosed",
            "max_selections": 1,
            "question": {_UNSTABLE_TEXT: QUESTION},
            "answers": [{"id": aid, _UNSTABLE_TEXT: label} for aid, label in answers],
        },
        _UNSTABLE_TEXT: fallback,
        "m.mentions": {},
    }


POLL_END = "m.poll.end"


def poll_end_content(poll_event_id: str, usefulness: Usefulness | None) -> dict[str, Any]:
    """Ends the poll once the demande is closed (by it, by a reaction or by `!clore`)."""
    said = f" Réponse retenue : {WORDS[usefulness]}." if usefulness else ""
    text = f"Sondage terminé : la demande est clôturée.{said}"
    return {
        "m.relates_to": {"rel_type": "m.reference", "event_id": poll_event_id},
        "m.text": [{"body": text}],
        "m.poll.end": {},
        "org.matrix.msc3381.poll.end": {},
        _UNSTABLE_TEXT: text,
        "m.mentions": {},
    }


def poll_answer(content: Mapping[str, Any]) -> tuple[str, Usefulness] | None:
    """(the poll's event ID, the answer) of an m.poll.response, in either form."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, Mapping) or not isinstance(relates.get("event_id"), str):
        return None
    selections: Any = content.get("m.selections")
    if selections is None:
        unstable = content.get("org.matrix.msc3381.poll.response")
        selections = unstable.get("answers") if isinstance(unstable, Mapping) else None
    if not isinstance(selections, list) or not selections:
        return None  # an empty selection withdraws a vote: nothing to close
    try:
        usefulness = Usefulness(str(selections[0]))
    except ValueError:
        return None
    return relates["event_id"], usefulness
