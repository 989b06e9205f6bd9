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
# After "boundary": an optional RFC 2231 star (then the count is done without it), "=".
_BOUNDARY_RE = re.compile(rb"""(\*[0-9]*\*?)?\s*=\s*(?:"([^"\r\n]*)"|([^\s;"]+))""")
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
# The parser splits lines at CRLF, LF and a bare CR alike: so do these scans.
_HEADERISH_RE = re.compile(rb"[\r\n][A-Za-z0-9-]{1,76}:")
_ANY_DELIMITER_RE = re.compile(rb"[\r\n]--")


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


def _split_head(raw: bytes) -> bytes:
    """The header block (up to the first blank line)."""
    end = _HEADER_END_RE.search(raw)
    return raw if end is None else raw[: end.start()]


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


def _boundaries(raw: bytes) -> set[bytes] | None:
    """Every ``boundary=`` value declared anywhere (headers of parts included), as the
    parser reads it (trailing spaces dropped); None if one is RFC 2231-encoded
    (``boundary*=``), which no mail client writes: then every ``--`` line counts."""
    found: set[bytes] = set()
    for first, last, end in _windows(raw, 0):
        window = raw[first:end].lower()
        pos = window.find(b"boundary")
        while -1 < pos < last - first:
            match = _BOUNDARY_RE.match(raw, first + pos + len(b"boundary"))
            if match:
                if match.group(1):
                    return None
                value = match.group(2) if match.group(2) is not None else match.group(3)
                found.add(value.rstrip())
                if len(found) > MAX_PARTS:
                    return found
            pos = window.find(b"boundary", pos + 1)
    return found


def _parts(raw: bytes) -> int:
    """Opening delimiter lines of declared boundaries: the parts the parser would build.

    Counted from the very start: the header block may end where this scan does not
    think it does (a bare CR blank line), and no header line starts with "--"."""
    boundaries = _boundaries(raw)
    if boundaries is None:
        return _count(_ANY_DELIMITER_RE, raw, 0, MAX_PARTS)
    if len(boundaries) > MAX_PARTS:
        return len(boundaries)  # each multipart declares one: over already
    if not boundaries:
        return 0
    alternatives = b"|".join(re.escape(b) for b in sorted(boundaries))
    delimiter = re.compile(rb"[\r\n]--(?:" + alternatives + rb")[ \t]*(?=[\r\n])")
    return _count(delimiter, raw, 0, MAX_PARTS)


def _line_count(raw: bytes, first: int = 0, last: int | None = None) -> int:
    """Lines as the parser splits them: at CRLF, LF or a bare CR."""
    last = len(raw) if last is None else last
    crlf = raw.count(b"\r\n", first, last)
    return raw.count(b"\n", first, last) + raw.count(b"\r", first, last) - crlf


def _lines(raw: bytes) -> int:
    # A CRLF across two windows is counted as two line ends: an upper bound, as wanted.
    return sum(_line_count(raw, first, last) for first, last, _ in _windows(raw, 0))


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
    head = _split_head(raw)
    lines = _line_count(head) + 1
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
    elif (parts := _parts(raw)) > MAX_PARTS:
        too_complex = f"more than {MAX_PARTS} MIME parts"
    elif (
        # From the start too (where the header block ends is the parser's call), so the
        # top block's own lines are allowed for.
        body_headers := max(0, _count(_HEADERISH_RE, raw, 0, MAX_BODY_HEADER_LINES + lines) - lines)
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
