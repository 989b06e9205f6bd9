"""MIME reading that never raises: charsets, header fields, the walk over parts (pure)."""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Callable
from email import policy
from email.header import decode_header
from email.message import Message
from typing import TypeVar

from bridge.addressing import normalise_address, parse_single_mailbox
from bridge.inbound.text import MAX_DECODED_CHARS, one_line

_T = TypeVar("_T")
_D = TypeVar("_D")

MAX_DEPTH = 64
MAX_PARTS = 500
_MSGID_RE = re.compile(r"<([!-;=?-~]{1,200})@([!-;=?-~]{1,200})>")
# Codecs Python knows that are no mail charset and could rebuild markup.
_REFUSED_CODECS = {"utf-7", "unicode-escape", "raw-unicode-escape", "idna", "punycode"}
_LATIN_LABELS = {"iso8859-1", "latin-1", "cp1252", "iso8859-15", "ascii"}


def _raw_value(value: object) -> str:
    """A raw header value as text: 8-bit bytes (smuggled as surrogates) recovered."""
    text = str(value)
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogateescape")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", "replace")
    return re.sub(r"\r?\n(?=[ \t])", "", text)


def decode_words(raw: str) -> str:
    """RFC 2047 decoding that never raises (unknown charsets fall back)."""
    try:
        chunks = decode_header(raw)
    except Exception:
        return raw
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            out.append(decode_bytes(chunk, charset, []))
    return "".join(out)


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    try:
        info = codecs.lookup(charset.strip().strip('"').lower())
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED_CODECS:
        return None
    return info.name


def decode_bytes(data: bytes, charset: str | None, defects: list[str]) -> str:
    """Decode with the declared charset, else UTF-8, else Windows-1252 (never fails)."""
    name = _codec(charset)
    if charset and name is None:
        defects.append(f"unknown or refused charset {one_line(charset, 40)!r}")
    if name in _LATIN_LABELS and not data.isascii():
        # Mislabelled mail: valid UTF-8 with 8-bit bytes is almost never latin-1.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if name is not None:
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            defects.append(f"text not valid in declared charset {name}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def header_fields(msg: Message) -> list[tuple[str, str]]:
    return [(name.lower(), _raw_value(value)) for name, value in msg.raw_items()]


def field_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def normalise_message_id(raw: str) -> str | None:
    value = raw.strip()
    match = _MSGID_RE.fullmatch(value)
    return value if match and len(value) <= 250 else None


def safely(fn: Callable[[], _T], default: _D) -> _T | _D:
    """Call a zero-argument parser accessor; header parsing bugs become the default."""
    try:
        return fn()
    except Exception:
        return default


def content_type_of(part: Message, default: str = "text/plain") -> str:
    return safely(part.get_content_type, default)


def payload_of(part: Message) -> object:
    return safely(part.get_payload, None)


def walk_leaves(msg: Message, defects: list[str]) -> list[Message]:
    """Leaves in document order; iterative, bounded in depth and count.

    message/* parts are leaves: a forwarded mail is an attachment, never body.
    """
    leaves: list[Message] = []
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            defects.append("too many MIME parts")
            break
        maintype = content_type_of(part).partition("/")[0]
        payload = payload_of(part)
        if maintype == "multipart" and isinstance(payload, list):
            if depth >= MAX_DEPTH:
                defects.append("MIME tree too deep")
                continue
            stack.extend((p, depth + 1) for p in reversed(payload) if isinstance(p, Message))
            continue
        leaves.append(part)
    return leaves


def parent_types(msg: Message) -> dict[int, str]:
    """id(part) → content type of its parent (bounded like :func:`walk_leaves`)."""
    parents: dict[int, str] = {}
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack and len(parents) < MAX_PARTS:
        part, depth = stack.pop()
        payload = payload_of(part)
        ctype = content_type_of(part)
        if ctype.startswith("multipart/") and isinstance(payload, list) and depth < MAX_DEPTH:
            for child in payload:
                if isinstance(child, Message):
                    parents[id(child)] = ctype
                    stack.append((child, depth + 1))
    return parents


def payload_bytes(part: Message) -> bytes:
    data = safely(lambda: part.get_payload(decode=True), None)
    if isinstance(data, bytes):
        return data
    payload = safely(lambda: part.get_payload(), "")
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    if isinstance(payload, list):
        # message/*: serialise what the parser kept, best effort.
        return b"".join(
            safely(functools.partial(m.as_bytes, policy=policy.compat32), b"")
            for m in payload
            if isinstance(m, Message)
        )
    return b""


def part_text(part: Message, defects: list[str]) -> str:
    data = payload_bytes(part)
    charset = safely(lambda: part.get_content_charset(), None)
    text = decode_bytes(data, charset if isinstance(charset, str) else None, defects)
    if len(text) > MAX_DECODED_CHARS:
        defects.append("text part truncated")
        text = text[:MAX_DECODED_CHARS]
    return text


def disposition_of(part: Message) -> str:
    return str(safely(part.get_content_disposition, "") or "")


def is_attachment(part: Message) -> bool:
    if disposition_of(part) == "attachment":
        return True
    return bool(safely(lambda: part.get_filename(), None))


_ANGLE_ADDR_RE = re.compile(r"<([^<>\s\"]+@[^<>\s\"]+)>")
_BARE_ADDR_RE = re.compile(r"[^\s<>,;:\"()=?]+@[^\s<>,;:\"()=?]+")


def addresses_of(from_values: list[str]) -> tuple[str, ...]:
    """Every address the From fields name (strict parse, else a plain scan).

    Informational: the decision is :func:`check_sender` on ``from_header``.
    """
    found: list[str] = []
    for value in from_values:
        strict = parse_single_mailbox(value)
        if strict is not None:
            found.append(strict[1])
            continue
        for spec in _ANGLE_ADDR_RE.findall(value) or _BARE_ADDR_RE.findall(value):
            found.append(normalise_address(spec) or one_line(spec, 254).lower())
    return tuple(dict.fromkeys(a for a in found if a))
