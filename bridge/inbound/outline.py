"""What a mail's header block and one linear scan of its bytes tell, before any MIME parse.

The stdlib parser builds the whole MIME tree, at about 0.4 ms a part: a 1.4 MB mail of
40,000 empty parts costs 20 s of CPU. So the listener first reads only the header
block (the sender, the authentication, the kind of mail) and counts, without parsing,
the parts and header lines the full parse would have to build; it refuses or files the
mail from that alone whenever it can, and parses only a mail that is authenticated,
from the right sender, and within bounds (pure, never raises).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser

from bridge.inbound.authres import auth_results
from bridge.inbound.mail import AuthVerdict, Kind
from bridge.inbound.mime import (
    MAX_PARTS,
    addresses_of,
    decode_words,
    field_values,
    header_fields,
    normalise_message_id,
)
from bridge.inbound.rules import classify
from bridge.inbound.text import one_line

__all__ = ["MAX_BODY_HEADER_LINES", "MAX_HEADER_LINES", "MAX_LINES", "Outline", "outline"]

MAX_HEADER_LINES = 1_000  # the top header block (a real one has 30 to 300)
MAX_BODY_HEADER_LINES = 5_000  # header-like lines below it (the parts', forwarded mails')
MAX_LINES = 400_000  # a 15 MiB mail of 76-character lines has 200,000
_BOUNDARY_RE = re.compile(rb"""\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))""")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_HEADERISH_RE = re.compile(rb"\n[A-Za-z0-9-]{1,76}:")


@dataclass(frozen=True, slots=True)
class Outline:
    header_lines: int
    lines: int
    parts: int  # opening delimiter lines of declared boundaries: the parts to build
    body_header_lines: int
    too_complex: str | None  # why the full parse is refused, if it is
    message_id: str | None
    from_header: str | None  # the single From field's raw value, else None
    subject: str
    kind: Kind  # from the headers alone (a delivery-status part is seen by the full parse)
    kind_reason: str
    auth: AuthVerdict


def _split_head(raw: bytes) -> tuple[bytes, int]:
    """The header block and the offset where the body starts."""
    end = _HEADER_END_RE.search(raw)
    if end is None:
        return raw, len(raw)
    return raw[: end.start()], end.end()


# The scans below run in the listener's parser thread while the bot's loop runs in
# another: a regex or bytes method holds the GIL for the whole call, so each call sees
# one window of the mail, short enough for the loop to get the GIL back in between.
_WINDOW = 1 << 17  # 128 KiB
_OVERLAP = 1_024  # longer than any SMTP line (1,000 bytes): nothing straddles unseen


def _windows(raw: bytes, start: int) -> Iterator[tuple[int, int, int]]:
    """(first, last + 1, scan end) of each window; a match is counted in the window where
    it starts, and may run into the overlap."""
    for first in range(start, len(raw), _WINDOW):
        last = min(len(raw), first + _WINDOW)
        yield first, last, min(len(raw), last + _OVERLAP)


def _count(pattern: re.Pattern[bytes], raw: bytes, start: int, enough: int) -> int:
    """Matches of `pattern` that start at or after `start`; stops once over `enough`."""
    count = 0
    for first, last, end in _windows(raw, start):
        for match in pattern.finditer(raw, first, end):
            if match.start() >= last:
                break
            count += 1
            if count > enough:
                return count
    return count


def _boundaries(raw: bytes) -> set[bytes]:
    """Every ``boundary=`` value declared anywhere (headers of parts included)."""
    found: set[bytes] = set()
    for first, last, end in _windows(raw, 0):
        window = raw[first:end].lower()
        pos = window.find(b"boundary")
        while -1 < pos < last - first:
            match = _BOUNDARY_RE.match(raw, first + pos + len(b"boundary"))
            if match:
                found.add(match.group(1) or match.group(2))
                if len(found) > MAX_PARTS:
                    return found
            pos = window.find(b"boundary", pos + 1)
    return found


def _parts(raw: bytes, body_start: int) -> int:
    """Opening delimiter lines of declared boundaries: the parts the parser would build."""
    boundaries = _boundaries(raw)
    if len(boundaries) > MAX_PARTS:
        return len(boundaries)  # each multipart declares one: over already
    if not boundaries:
        return 0
    alternatives = b"|".join(re.escape(b) for b in sorted(boundaries))
    delimiter = re.compile(rb"\n--(?:" + alternatives + rb")[ \t]*(?=\r?\n)")
    return _count(delimiter, raw, max(0, body_start - 1), MAX_PARTS)


def _lines(raw: bytes) -> int:
    return sum(raw.count(b"\n", first, last) for first, last, _ in _windows(raw, 0))


def _none(reason: str, lines: int) -> Outline:
    return Outline(
        header_lines=lines,
        lines=0,
        parts=0,
        body_header_lines=0,
        too_complex=reason,
        message_id=None,
        from_header=None,
        subject="",
        kind=Kind.HUMAN,
        kind_reason="not read",
        auth=AuthVerdict(False, False, "not read"),
    )


def outline(
    raw: bytes,
    *,
    mail_from: str | None,
    trusted_authserv_ids: Collection[str],
    max_received: int = 30,
) -> Outline:
    """The header-level view of ``raw``; ``too_complex`` says why not to parse it fully."""
    head, body_start = _split_head(raw)
    lines = head.count(b"\n") + 1
    if lines > MAX_HEADER_LINES:
        return _none(f"{lines} header lines (at most {MAX_HEADER_LINES})", lines)
    try:
        msg = BytesParser(policy=policy.default).parsebytes(head + b"\r\n\r\n", headersonly=True)
        headers = header_fields(msg)
    except Exception as exc:
        return _none(f"unreadable header block ({type(exc).__name__})", lines)
    ids = field_values(headers, "message-id")
    message_id = normalise_message_id(ids[0]) if len(ids) == 1 else None
    froms = field_values(headers, "from")
    subjects = field_values(headers, "subject")
    subject = one_line(decode_words(subjects[0]), 300) if subjects else ""
    kind, reason = classify(msg, headers, subject, addresses_of(froms), mail_from, max_received)
    # Cheapest first; once one bound is over, the others are not counted.
    total_lines = _lines(raw)
    parts = body_headers = 0
    too_complex = None
    if total_lines > MAX_LINES:
        too_complex = f"{total_lines} lines (at most {MAX_LINES})"
    elif (parts := _parts(raw, body_start)) > MAX_PARTS:
        too_complex = f"more than {MAX_PARTS} MIME parts"
    elif (
        body_headers := _count(_HEADERISH_RE, raw, max(0, body_start - 1), MAX_BODY_HEADER_LINES)
    ) > MAX_BODY_HEADER_LINES:
        too_complex = f"more than {MAX_BODY_HEADER_LINES} header lines below the top"
    return Outline(
        header_lines=lines,
        lines=total_lines,
        parts=parts,
        body_header_lines=body_headers,
        too_complex=too_complex,
        message_id=message_id,
        from_header=froms[0] if len(froms) == 1 else None,
        subject=subject,
        kind=kind,
        kind_reason=reason,
        auth=auth_results(msg, trusted_authserv_ids),
    )
