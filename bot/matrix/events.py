"""nio events kept by the bot (a retry, after a restart) and given back as nio gave them."""

from __future__ import annotations

from typing import Any

from nio import Event


def parse_stored(source: dict[str, Any], decrypted: bool) -> Any:
    """The event nio would have handed over: a decrypted one is marked as such (a form
    is only taken from an encrypted message)."""
    if not decrypted:
        return Event.parse_event(source)
    event = Event.parse_decrypted_event(source)
    event.decrypted = True
    return event
