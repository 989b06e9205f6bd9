"""What a delivery status notification says: who failed, and which of our mails (pure)."""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import HeaderParser

from bridge.addressing import normalise_address
from bridge.inbound.mail import BounceRecipient
from bridge.inbound.mime import (
    content_type_of,
    field_values,
    header_fields,
    normalise_message_id,
    payload_of,
)
from bridge.inbound.text import one_line


def bounce_details(
    leaves: list[Message],
) -> tuple[tuple[BounceRecipient, ...], str | None]:
    recipients: list[BounceRecipient] = []
    original: str | None = None
    for part in leaves:
        ctype = str(content_type_of(part, ""))
        payload = payload_of(part)
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            blocks = payload if isinstance(payload, list) else []
            for block in blocks[1:]:
                if not isinstance(block, Message):
                    continue
                fields = header_fields(block)
                final = field_values(fields, "final-recipient") or field_values(
                    fields, "original-recipient"
                )
                if not final:
                    continue
                address = final[0].partition(";")[2].strip().strip("<>")
                normalised = normalise_address(address)
                action = (field_values(fields, "action") or [""])[0]
                status = (field_values(fields, "status") or [""])[0]
                recipients.append(
                    BounceRecipient(
                        normalised or one_line(address, 254).lower(),
                        one_line(action, 40).lower(),
                        one_line(status, 40),
                    )
                )
        elif ctype in ("message/rfc822", "text/rfc822-headers") and original is None:
            inner: Message | None = None
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                inner = payload[0]
            elif isinstance(payload, str):
                inner = HeaderParser(policy=policy.compat32).parsestr(payload[:100_000])
            if inner is not None:
                ids = field_values(header_fields(inner), "message-id")
                original = normalise_message_id(ids[0]) if ids else None
    return tuple(recipients[:100]), original
