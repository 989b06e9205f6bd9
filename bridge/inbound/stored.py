"""An `InboundMail` as bytes for the inbox, and back: the listener parses a mail once.

The listener keeps what it parsed next to the raw mail (both sealed by the store);
posting reads it back instead of parsing the raw bytes again, perhaps with other
settings than the ones the mail was accepted with. Layout: one line of JSON (every
field but the attachments' bytes, with their sizes), then those bytes end to end.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.inbound.mail import (
    AuthVerdict,
    BounceRecipient,
    Command,
    InboundAttachment,
    InboundMail,
    Kind,
    RefusalReason,
    RefusedAttachment,
)

__all__ = ["decode", "encode"]

VERSION = 1


def encode(mail: InboundMail) -> bytes:
    head: dict[str, Any] = {
        "v": VERSION,
        "message_id": mail.message_id,
        "from_addresses": list(mail.from_addresses),
        "from_header": mail.from_header,
        "subject": mail.subject,
        "kind": mail.kind.value,
        "kind_reason": mail.kind_reason,
        "text": mail.text,
        "command": mail.command.value if mail.command else None,
        "command_line": mail.command_line,
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": len(a.data),
             "sha256": a.sha256}
            for a in mail.attachments
        ],
        "refused": [
            {"filename": r.filename, "content_type": r.content_type, "size": r.size,
             "reason": r.reason.value}
            for r in mail.refused_attachments
        ],
        "content_hash": mail.content_hash,
        "defects": list(mail.defects),
        "auth": [mail.auth.dmarc_pass, mail.auth.dkim_aligned_pass, mail.auth.reason],
        "bounce_recipients": [[b.address, b.action, b.status] for b in mail.bounce_recipients],
        "bounced_message_id": mail.bounced_message_id,
    }  # fmt: skip
    line = json.dumps(head, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"".join([line, b"\n", *(a.data for a in mail.attachments)])


def decode(blob: bytes) -> InboundMail:
    line, _, data = blob.partition(b"\n")
    head = json.loads(line)
    if head.get("v") != VERSION:
        raise ValueError(f"stored inbound mail of version {head.get('v')!r}")
    attachments = []
    offset = 0
    for a in head["attachments"]:
        chunk = data[offset : offset + a["size"]]
        offset += a["size"]
        attachments.append(
            InboundAttachment(a["filename"], a["content_type"], a["size"], a["sha256"], chunk)
        )
    if offset != len(data):
        raise ValueError("stored inbound mail: attachment bytes do not add up")
    dmarc, dkim, reason = head["auth"]
    return InboundMail(
        message_id=head["message_id"],
        from_addresses=tuple(head["from_addresses"]),
        from_header=head["from_header"],
        subject=head["subject"],
        kind=Kind(head["kind"]),
        kind_reason=head["kind_reason"],
        text=head["text"],
        command=Command(head["command"]) if head["command"] else None,
        command_line=head.get("command_line"),
        attachments=tuple(attachments),
        refused_attachments=tuple(
            RefusedAttachment(
                r["filename"], r["content_type"], r["size"], RefusalReason(r["reason"])
            )
            for r in head["refused"]
        ),
        content_hash=head["content_hash"],
        defects=tuple(head["defects"]),
        auth=AuthVerdict(bool(dmarc), bool(dkim), reason),
        bounce_recipients=tuple(BounceRecipient(*b) for b in head["bounce_recipients"]),
        bounced_message_id=head["bounced_message_id"],
    )
