"""Demande references (« A-2026-000042 ») and room names.

A room name is state, which the homeserver stores in clear: it is built only from
the reference, catalogue organisation names and the département code, and
refuses anything else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_REFERENCE = re.compile(r"A-(\d{4})-(\d{6,})")
_TERRITOIRE = re.compile(r"\d{2,3}|2A|2B")
_ORGANISATION_NAME = re.compile(r"[\w' ’.()&-]{1,40}")

SEPARATOR = " · "


def format_reference(year: int, seq: int) -> str:
    """`A-2026-000042`; the sequence widens past 999 999 rather than wrapping."""
    if not 1000 <= year <= 9999:
        raise ValueError(f"year out of range: {year}")
    if seq < 1:
        raise ValueError(f"sequence must be positive: {seq}")
    return f"A-{year:04d}-{seq:06d}"


def parse_reference(text: str) -> tuple[int, int] | None:
    """(year, seq) of a reference written exactly as `format_reference` does, else None."""
    candidate = text.strip().upper()
    m = _REFERENCE.fullmatch(candidate)
    if m is None:
        return None
    year, seq = int(m.group(1)), int(m.group(2))
    try:
        canonical = format_reference(year, seq)
    except ValueError:
        return None
    # "A-2026-0000042" would alias A-2026-000042: one demande, one spelling.
    return (year, seq) if canonical == candidate else None


def room_name(reference: str, organisation_names: Sequence[str], territoire: str) -> str:
    """`Demande A-2026-000042 · CAF / CPAM · 95`: never any usager data."""
    if parse_reference(reference) is None:
        raise ValueError(f"not a demande reference: {reference!r}")
    if not _TERRITOIRE.fullmatch(territoire):
        raise ValueError("territoire must be a département code")
    names: list[str] = []
    for name in organisation_names:
        clean = " ".join(name.split())
        if not _ORGANISATION_NAME.fullmatch(clean) or any(c.isdigit() for c in clean):
            raise ValueError("organisation names must be short catalogue names")
        if clean not in names:
            names.append(clean)
    parts = [f"Demande {reference.strip().upper()}"]
    if names:
        parts.append(" / ".join(names))
    parts.append(territoire)
    return SEPARATOR.join(parts)
