"""Matrix message contents the bot sends (pure)."""

from __future__ import annotations

from typing import Any

HTML_FORMAT = "org.matrix.custom.html"
# Custom keys in our own events, so the bot recognises what it sent (never personal data).
APLUS_KEY = "fr.aplus"


def notice(text: str, html: str | None = None, **marker: Any) -> dict[str, Any]:
    """A bot message. m.notice: clients and other bots know not to answer it."""
    content: dict[str, Any] = {"msgtype": "m.notice", "body": text}
    if html is not None:
        content["format"] = HTML_FORMAT
        content["formatted_body"] = html
    if marker:
        content[APLUS_KEY] = dict(marker)
    return content


def text(text_: str, html: str | None = None, **marker: Any) -> dict[str, Any]:
    content = notice(text_, html, **marker)
    content["msgtype"] = "m.text"
    return content
