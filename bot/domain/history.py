"""The copy of a demande's earlier exchange, for a participant who arrives later (pure).

Why a copy and not the room's earlier keys: the room's history visibility is
« invited » (see `room_spec`), so the homeserver does not even give a newcomer the
events from before their invitation; and the keys of other participants' messages
are theirs, not the bot's (Element refuses keys forwarded by another user). So the
bot, which reads everything in its rooms, re-posts what was said before (author,
time, text, files), encrypted like any message, clearly marked as a copy, in parts
that stay well under the homeserver's 64 KiB event limit. Nothing is stored: the
service reads the room's history again when someone arrives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

# Body and formatted body together, in UTF-8 bytes. Encrypted, a message grows by about
# a third (base64 of the Megolm ciphertext) plus ~1 KB of envelope: 24 KB of text stays
# around 33 KB on the wire, half of the 64 KiB limit.
PART_BUDGET_BYTES = 24_000
# A single message longer than this is cut into pieces (only possible for pasted texts).
PIECE_CHARS = 4_000


@dataclass(frozen=True, slots=True)
class EarlierMessage:
    """One message of the room before the newcomer arrived, as the bot decrypted it."""

    at: datetime  # aware
    author: str  # a display label: « Marie Petit (CAF) », « Administration+ »
    text: str | None  # None when the bot itself could not decrypt it
    file: Mapping[str, Any] | None = None  # the content of a file message, re-posted as is


@dataclass(frozen=True, slots=True)
class TextPart:
    body: str
    html: str


@dataclass(frozen=True, slots=True)
class FilePart:
    content: Mapping[str, Any]


Part = TextPart | FilePart

UNREADABLE = "(message que le service n'a pas pu déchiffrer : il n'est pas recopié)"


def _when(at: datetime) -> str:
    return f"le {at:%d/%m/%Y} à {at:%H:%M}"


def _pieces(text: str) -> list[str]:
    if len(text) <= PIECE_CHARS:
        return [text]
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def _entry(message: EarlierMessage, text: str, *, cont: bool) -> tuple[str, str]:
    head = f"{message.author}, {_when(message.at)}" + (" (suite)" if cont else "")
    body = f"— {head} :\n{text}"
    html = (
        f"<p><strong>{escape(head)}</strong> :<br>"
        + "<br>".join(escape(line) for line in text.split("\n"))
        + "</p>"
    )
    return body, html


def _size(body: str, html: str) -> int:
    return len(body.encode("utf-8")) + len(html.encode("utf-8"))


def history_parts(
    messages: Sequence[EarlierMessage], *, newcomer: str, budget: int = PART_BUDGET_BYTES
) -> list[Part]:
    """The copy, in order: text parts (each under `budget`) and the files between them.

    ``newcomer`` names who it is for (a display label). Empty when there is nothing
    to copy. Every text part starts with the same header, numbered.
    """
    entries: list[tuple[str, str] | Mapping[str, Any]] = []
    for message in messages:
        if message.file is not None:
            name = str(message.file.get("body") or "fichier")
            entries.append(_entry(message, f"Fichier « {name} » (recopié ci-après)", cont=False))
            entries.append(message.file)
            continue
        text = message.text if message.text is not None else UNREADABLE
        for i, piece in enumerate(_pieces(text)):
            entries.append(_entry(message, piece, cont=i > 0))
    if not entries:
        return []

    groups: list[list[tuple[str, str]] | Mapping[str, Any]] = []
    current: list[tuple[str, str]] = []
    size = 0
    header_room = 600  # the header, numbered, added afterwards
    for entry in entries:
        if not isinstance(entry, tuple):
            if current:
                groups.append(current)
                current, size = [], 0
            groups.append(entry)
            continue
        cost = _size(*entry) + 2
        if current and size + cost > budget - header_room:
            groups.append(current)
            current, size = [], 0
        current.append(entry)
        size += cost
    if current:
        groups.append(current)

    total = sum(1 for g in groups if isinstance(g, list))
    parts: list[Part] = []
    n = 0
    for group in groups:
        if not isinstance(group, list):
            parts.append(FilePart(group))
            continue
        n += 1
        numbering = f" ({n}/{total})" if total > 1 else ""
        header = (
            f"Copie des échanges précédents{numbering}, pour {newcomer}, arrivé(e) "
            "après l'ouverture. Ce sont des messages déjà envoyés dans ce salon, "
            "recopiés par le service."
        )
        body = "\n\n".join([header, *(b for b, _ in group)])
        html = f"<p><em>{escape(header)}</em></p>" + "".join(h for _, h in group)
        parts.append(TextPart(body, html))
    return parts
