"""The reply without its quoted history or signature, and its quick answer (pure)."""

from __future__ import annotations

import re
import unicodedata

from bridge.inbound.mail import Command

QUOTE_SENTINEL = "\x1e"  # marks "quoted history starts here" in converted HTML

_ORIGINAL_RE = re.compile(
    r"^-{2,}\s*(original message|message d['’]origine|courriel original)\s*-{2,}$", re.IGNORECASE
)
_ATTRIBUTION_FR_RE = re.compile(r"^Le\s.{1,300}\sa\s+[ée]crit\s*:?$", re.IGNORECASE)
_ATTRIBUTION_EN_RE = re.compile(r"^On\s.{1,300}\swrote\s*:?$", re.IGNORECASE)
_OUTLOOK_FROM_RE = re.compile(r"^\**\s*(de|from)\s*:\**\s*\S", re.IGNORECASE)
_OUTLOOK_FIELD_RE = re.compile(
    r"^\**\s*(envoyé|envoye|sent|date|à|a|to|objet|subject|cc)\s*:", re.IGNORECASE
)


def _is_attribution(lines: list[str], i: int) -> bool:
    first = lines[i].strip()
    if not re.match(r"(?i)(le|on)\s", first):
        return False
    joined = first
    for extra in range(3):
        if extra:
            if i + extra >= len(lines):
                break
            following = lines[i + extra].strip()
            # A wrapped attribution goes on without a blank line, a full stop, or a new
            # « Le … »: otherwise the agent's own sentence would be taken for it.
            if not following or joined.endswith((".", "!", "?", "…")):
                break
            if re.match(r"(?i)(le|on)\s", following):
                break
            joined = f"{joined} {following}"
        if re.search(r"\d", joined) and (
            _ATTRIBUTION_FR_RE.match(joined) or _ATTRIBUTION_EN_RE.match(joined)
        ):
            return True
    return False


def _is_outlook_header(lines: list[str], i: int) -> bool:
    if not _OUTLOOK_FROM_RE.match(lines[i].strip()):
        return False
    following = [ln.strip() for ln in lines[i + 1 : i + 6]]
    return sum(1 for ln in following if _OUTLOOK_FIELD_RE.match(ln)) >= 2


def strip_quoted(text: str) -> str:
    """Cut quoted history and signature from a reply; drop ``>`` lines; trim."""
    lines = text.split("\n")
    cut = len(lines)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if (
            stripped == QUOTE_SENTINEL
            or line.rstrip() == "--"
            or _ORIGINAL_RE.match(stripped)
            or _is_attribution(lines, i)
            or _is_outlook_header(lines, i)
        ):
            cut = i
            break
    kept = [ln.rstrip() for ln in lines[:cut] if not ln.startswith(">")]
    # Outlook puts a line of underscores above its header block.
    while kept and (not kept[-1].strip() or re.fullmatch(r"_{8,}", kept[-1].strip())):
        kept.pop()
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(kept))
    return out.strip("\n").strip()


_COMMANDS = {f"!{c.value}": c for c in Command}


def command_of(line: str) -> Command | None:
    key = "".join(line.split()).casefold()
    key = "".join(c for c in unicodedata.normalize("NFKD", key) if not unicodedata.combining(c))
    return _COMMANDS.get(key)
