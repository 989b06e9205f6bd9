"""Small text helpers shared by the inbound parser's modules (pure)."""

from __future__ import annotations

import re
import unicodedata

MAX_DECODED_CHARS = 1_000_000  # bound on any text part before any regex runs
WS_RE = re.compile(r"\s+")


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def is_unsafe_char(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")


def one_line(value: str, max_chars: int) -> str:
    cleaned = "".join(" " if is_unsafe_char(c) else c for c in value)
    cleaned = WS_RE.sub(" ", cleaned).strip()
    return cleaned[:max_chars]


# Angle-bracketed URLs and addresses are kept; any other '<' that could open a
# tag becomes '‹' so no text we hand over can be read as markup.
_TAGLIKE_RE = re.compile(
    r"(<(?:https?://|mailto:)[^\s<>\"']*>|<[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+>)|<(?=[A-Za-z/!?])"
)


def defang(text: str) -> str:
    return _TAGLIKE_RE.sub(lambda m: m.group(1) or "‹", text)


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in text if c in "\n\t" or not is_unsafe_char(c))
