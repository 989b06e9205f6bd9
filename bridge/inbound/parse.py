"""Email → Matrix: turn an inbound reply into plain data, never raising (pure).

:func:`parse_inbound` reads untrusted bytes. Everything odd becomes a
``defect`` string; the worst case is an :class:`InboundMail` with empty text.
The text it returns is plain text (HTML is converted, never passed through),
without quoted history or signature, with anything tag-like defanged.

What the caller does with the result (not decided here):

* ``kind`` other than ``HUMAN``: accept silently, never post. A ``BOUNCE``
  may mark a recipient only if ``bounced_message_id`` is one of ours.
* ``auth.authenticated`` false, or ``check_sender`` false: refuse, audit.
* ``text == ""`` with no command and no attachment: nothing to post.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Collection
from email import policy
from email.parser import BytesParser

from bridge.inbound.attachments import check_attachment
from bridge.inbound.authres import auth_results
from bridge.inbound.bounces import bounce_details
from bridge.inbound.html_text import html_to_text
from bridge.inbound.mail import (
    AuthVerdict,
    BounceRecipient,
    Command,
    InboundAttachment,
    InboundMail,
    Kind,
    RefusedAttachment,
)
from bridge.inbound.mime import (
    addresses_of,
    content_type_of,
    decode_words,
    disposition_of,
    field_values,
    header_fields,
    is_attachment,
    normalise_message_id,
    parent_types,
    part_text,
    walk_leaves,
)
from bridge.inbound.quotes import command_of, strip_quoted
from bridge.inbound.rules import classify
from bridge.inbound.text import clean_text, defang, one_line

__all__ = ["MAX_TEXT_CHARS", "parse_inbound"]

MAX_TEXT_CHARS = 20_000  # longest reply text handed to Matrix
MAX_COMMAND_CHARS = 200  # longest command line read from a reply's first line
_MAX_SUBJECT_CHARS = 300
_TRUNCATED_NOTE = "[… message tronqué]"


def _content_hash(
    text: str,
    command: Command | None,
    attachments: list[InboundAttachment],
    command_line: str | None = None,
) -> str:
    h = hashlib.sha256(b"aplus-inbound-v1\x00")
    h.update(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass"))
    h.update(b"\x00" + (command.value if command else "").encode("ascii"))
    if command_line:
        h.update(b"\x00!" + command_line.encode("utf-8", "surrogatepass"))
    for att in attachments:
        h.update(b"\x00" + att.sha256.encode("ascii"))
    return h.hexdigest()


def parse_inbound(
    raw: bytes,
    *,
    max_attachment_bytes: int,
    allowed_types: Collection[str],
    mail_from: str | None = None,
    trusted_authserv_ids: Collection[str] = (),
    max_received: int = 30,
) -> InboundMail:
    """Parse one inbound message. Never raises: problems end up in ``defects``.

    ``mail_from`` is the envelope sender (``""`` for a bounce); ``None`` when
    unknown. ``allowed_types`` are lowercase MIME types.
    """
    defects: list[str] = []
    try:
        return _parse(
            raw,
            defects,
            max_attachment_bytes=max_attachment_bytes,
            allowed=frozenset(t.strip().lower() for t in allowed_types),
            mail_from=mail_from,
            trusted=trusted_authserv_ids,
            max_received=max_received,
        )
    except Exception as exc:  # the one place where "never raise" is enforced
        defects.append(f"unparseable message ({type(exc).__name__})")
        digest = hashlib.sha256(b"aplus-inbound-raw-v1\x00" + bytes(raw)).hexdigest()
        return InboundMail(
            message_id=None,
            from_addresses=(),
            from_header=None,
            subject="",
            kind=Kind.HUMAN,
            kind_reason="unparseable",
            text="",
            command=None,
            attachments=(),
            refused_attachments=(),
            content_hash=digest,
            defects=tuple(defects),
            auth=AuthVerdict(False, False, "unparseable message"),
        )


def _parse(
    raw: bytes,
    defects: list[str],
    *,
    max_attachment_bytes: int,
    allowed: frozenset[str],
    mail_from: str | None,
    trusted: Collection[str],
    max_received: int,
) -> InboundMail:
    msg = BytesParser(policy=policy.default).parsebytes(bytes(raw))
    headers = header_fields(msg)

    ids = field_values(headers, "message-id")
    message_id = normalise_message_id(ids[0]) if len(ids) == 1 else None
    if len(ids) > 1:
        defects.append("several Message-ID fields")
    elif ids and message_id is None:
        defects.append("malformed Message-ID")

    from_values = field_values(headers, "from")
    from_header = from_values[0] if len(from_values) == 1 else None
    if len(from_values) > 1:
        defects.append("several From fields")
    from_addresses = addresses_of(from_values)
    if len(from_addresses) > 1:
        defects.append("several From addresses")

    subjects = field_values(headers, "subject")
    subject = one_line(decode_words(subjects[0]), _MAX_SUBJECT_CHARS) if subjects else ""

    kind, reason = classify(msg, headers, subject, from_addresses, mail_from, max_received)

    leaves = walk_leaves(msg, defects)
    parents = parent_types(msg)
    plain: list[str] = []
    html: list[str] = []
    attachments: list[InboundAttachment] = []
    refused: list[RefusedAttachment] = []
    for part in leaves:
        ctype = content_type_of(part)
        if ctype.startswith("multipart/"):
            ctype = "text/plain"  # broken multipart (no boundary): fall back to text
        if not is_attachment(part) and ctype in ("text/plain", "text/html"):
            (plain if ctype == "text/plain" else html).append(part_text(part, defects))
            continue
        if part is msg and ctype.startswith("text/"):
            continue  # a single-part non-text/plain body: nothing to attach
        if parents.get(id(part)) == "multipart/related" and disposition_of(part) != "attachment":
            continue  # images referenced by the HTML (signature logos)
        if kind is not Kind.HUMAN:
            continue
        result = check_attachment(part, max_attachment_bytes, allowed)
        if isinstance(result, InboundAttachment):
            attachments.append(result)
        else:
            refused.append(result)

    if plain:
        body = "\n\n".join(clean_text(p) for p in plain)
    elif html:
        body = "\n\n".join(html_to_text(h) for h in html)
    else:
        body = ""
    text = defang(clean_text(strip_quoted(body)))

    command: Command | None = None
    command_line: str | None = None
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None:
        command = command_of(lines[first])
        if command is None and lines[first].strip().startswith("!"):
            command_line = one_line(lines[first], MAX_COMMAND_CHARS)
        if command is not None or command_line is not None:
            text = "\n".join(lines[first + 1 :]).strip()
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS].rstrip() + "\n" + _TRUNCATED_NOTE
        defects.append("text truncated")

    bounce_recipients: tuple[BounceRecipient, ...] = ()
    bounced_id: str | None = None
    if kind is Kind.BOUNCE:
        bounce_recipients, bounced_id = bounce_details(leaves)

    for part in [msg, *leaves]:
        for defect in getattr(part, "defects", ()):
            defects.append(type(defect).__name__)

    return InboundMail(
        message_id=message_id,
        from_addresses=from_addresses,
        from_header=from_header,
        subject=subject,
        kind=kind,
        kind_reason=reason,
        text=text,
        command=command,
        attachments=tuple(attachments),
        refused_attachments=tuple(refused),
        content_hash=_content_hash(text, command, attachments, command_line),
        defects=tuple(dict.fromkeys(defects)),
        auth=auth_results(msg, trusted),
        bounce_recipients=bounce_recipients,
        bounced_message_id=bounced_id,
        command_line=command_line,
    )
