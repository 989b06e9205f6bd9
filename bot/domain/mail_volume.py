"""How much mail an agent gets: every email at once, or one digest a day per demande."""

from __future__ import annotations

DEFAULT_DIGEST_HOUR = 17


def digest_hour(text: str, default: int = DEFAULT_DIGEST_HOUR) -> int | None:
    """« 17 », « 17h », « 17 h », « 8h00 »; empty: `default`. None if not an hour."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned:
        return default
    cleaned = cleaned.removesuffix("00").removesuffix(":").removesuffix("h")
    if not cleaned.isdigit() or not 0 <= int(cleaned) <= 23:
        return None
    return int(cleaned)
