"""Logging without secrets or personal data: one filter on every handler, quiet libraries.

Two layers, because either alone has holes:

* **Levels.** Third-party loggers that write what they read are held above the level
  where they do it: aiosmtpd's ``mail.log`` writes every SMTP command (the reply
  address, hence the live token, in ``RCPT TO``) at INFO and every DATA line (the
  whole message) at DEBUG; nio writes the jsonschema error of a decrypted event that
  fails its schema at WARNING, and that error quotes the decrypted content
  (``nio.events.misc``: "Error validating event … On instance[...]: {...}").
* **One filter** (:class:`PrivacyFilter`), on every handler, masks what must never
  be written, whoever logs it: reply addresses (``reply+<token>@`` becomes
  ``reply+…@``), the instance quoted by a jsonschema error, the values of event
  content keys (``body``, ``formatted_body``, ``content``…) in a dict or JSON
  rendered into a message, and the message lines aiosmtpd logs while reading DATA.
  Tracebacks are masked the same way.

`configure` is the one logging set-up (the CLI's ``aplus run`` and ``aplus dev``).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO

__all__ = ["QUIET_LOGGERS", "PrivacyFilter", "configure", "mask"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# logger → the lowest level it may write at (a more verbose set-up cannot go below it).
QUIET_LOGGERS: dict[str, int] = {
    "nio": logging.WARNING,  # chatty at INFO; event contents at DEBUG
    "nio.events": logging.ERROR,  # decrypted content in schema warnings
    "nio.responses": logging.ERROR,  # offending values of a sync in schema warnings
    "mail.log": logging.WARNING,  # aiosmtpd: commands (tokens) at INFO, DATA at DEBUG
    "mail.debug": logging.WARNING,
    "aiosmtplib": logging.WARNING,
    "aiohttp": logging.WARNING,
    "aiosqlite": logging.WARNING,  # every SQL statement with its parameters at DEBUG
    "sqlalchemy": logging.WARNING,
    "peewee": logging.WARNING,
    "alembic": logging.WARNING,
}

MASK = "…"
_REPLY_RE = re.compile(r"(reply\+)[^@\s'\"<>]+(?=@)", re.IGNORECASE)
_INSTANCE_RE = re.compile(r"\s*On instance.*", re.DOTALL)
# A key whose value is (or holds) what a participant wrote, in a repr or in JSON.
_CONTENT_KEY_RE = re.compile(
    r"""(['"])(body|formatted_body|content|m\.new_content|filename|plaintext|text)\1\s*:\s*"""
)
_OPENERS = {"{": "}", "[": "]"}


def _skip_string(text: str, i: int) -> int:
    """Index just past the quoted string that starts at ``text[i]``."""
    quote = text[i]
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    return len(text)


def _skip_nested(text: str, i: int) -> int:
    """Index just past the bracketed value that starts at ``text[i]`` (quotes respected)."""
    stack = [_OPENERS[text[i]]]
    i += 1
    while i < len(text) and stack:
        ch = text[i]
        if ch in "'\"":
            i = _skip_string(text, i)
            continue
        if ch in _OPENERS:
            stack.append(_OPENERS[ch])
        elif ch == stack[-1]:
            stack.pop()
        i += 1
    return i


def _mask_content_values(text: str) -> str:
    out: list[str] = []
    pos = 0
    for match in _CONTENT_KEY_RE.finditer(text):
        start = match.end()
        if start < pos or start >= len(text):
            continue  # inside a value already masked
        first = text[start]
        if first in "'\"":
            end = _skip_string(text, start)
            replacement = f"{first}{MASK}{first}"
        elif first in _OPENERS:
            end = _skip_nested(text, start)
            replacement = f"{first}{MASK}{_OPENERS[first]}"
        else:
            continue
        out.append(text[pos:start])
        out.append(replacement)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def mask(text: str) -> str:
    """``text`` without reply tokens, quoted schema instances or event content values."""
    if "reply+" in text.lower():
        text = _REPLY_RE.sub(rf"\g<1>{MASK}", text)
    if "On instance" in text:
        text = _INSTANCE_RE.sub("\n[contenu masqué]", text)
    if _CONTENT_KEY_RE.search(text):
        text = _mask_content_values(text)
    return text


def _is_smtp_data(record: logging.LogRecord) -> bool:
    """aiosmtpd's lines of message data (its ``mail.*`` loggers, "… readline …")."""
    return record.name.startswith("mail.") and "readline" in str(record.msg)


class PrivacyFilter(logging.Filter):
    """Masks secrets and personal data in every record it sees; never drops one."""

    _render = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if _is_smtp_data(record):
                head = str(record.msg).split(":", 1)[0]
                record.msg, record.args = f"{head}: [contenu masqué]", None
            else:
                message = record.getMessage()
                record.msg, record.args = mask(message), None
            if record.exc_info and not record.exc_text:
                record.exc_text = self._render.formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = mask(record.exc_text)
            if record.stack_info:
                record.stack_info = mask(record.stack_info)
        except Exception:  # a record that cannot even be rendered is not written as is
            record.msg, record.args = "[message illisible, masqué]", None
            record.exc_info, record.exc_text = None, None
        return True


def install(handler: logging.Handler) -> None:
    if not any(isinstance(f, PrivacyFilter) for f in handler.filters):
        handler.addFilter(PrivacyFilter())


def configure(level: str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """The process's logging: one stream handler on the root logger, every handler filtered.

    Returns the handler it added (tests remove it afterwards).
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for existing in root.handlers:
        install(existing)
    for name, floor in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))
    return handler
