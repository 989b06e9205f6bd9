"""Matrix message contents the bot sends (pure)."""

from __future__ import annotations

import html as html_lib
from collections.abc import Sequence
from typing import Any

HTML_FORMAT = "org.matrix.custom.html"
# Custom keys in our own events, so the bot recognises what it sent (never personal data).
APLUS_KEY = "fr.aplus"


def notice(text: str, html: str | None = None, **marker: Any) -> dict[str, Any]:
    """A bot message for information. m.notice: clients do not notify it, other bots do
    not answer it; an empty ``m.mentions`` says it mentions nobody, so that a name in it
    (the dossier lists the participants) does not highlight it for them."""
    content: dict[str, Any] = {"msgtype": "m.notice", "body": text, "m.mentions": {}}
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


def to_act(text_: str, html: str | None, users: Sequence[str], **marker: Any) -> dict[str, Any]:
    """A bot message that asks these people to act: an m.text (Element notifies it) with
    intentional mentions of exactly them, and nobody else. With nobody to ask, a notice."""
    wanted = sorted(dict.fromkeys(u for u in users if u))
    if not wanted:
        return notice(text_, html, **marker)
    content = text(text_, html, **marker)
    content["m.mentions"] = {"user_ids": wanted}
    return content


def pill(user_id: str, name: str) -> str:
    """An HTML mention of `user_id` shown as `name` (what Element's composer writes)."""
    href = html_lib.escape(f"https://matrix.to/#/{user_id}", quote=True)
    return f'<a href="{href}">{html_lib.escape(name)}</a>'
