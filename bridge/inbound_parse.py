"""The inbound parser's former single module: its public names, now in `bridge.inbound`.

Kept while other branches still import from here; new code imports the modules.
"""

from bridge.inbound.attachments import sanitise_filename
from bridge.inbound.authres import auth_results, dkim_aligned
from bridge.inbound.html_text import html_to_text
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
from bridge.inbound.mime import normalise_message_id
from bridge.inbound.parse import MAX_TEXT_CHARS, parse_inbound
from bridge.inbound.quotes import strip_quoted

__all__ = [
    "MAX_TEXT_CHARS",
    "AuthVerdict",
    "BounceRecipient",
    "Command",
    "InboundAttachment",
    "InboundMail",
    "Kind",
    "RefusalReason",
    "RefusedAttachment",
    "auth_results",
    "dkim_aligned",
    "html_to_text",
    "normalise_message_id",
    "parse_inbound",
    "sanitise_filename",
    "strip_quoted",
]
