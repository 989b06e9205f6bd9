"""Every SMTP reply the inbound bridge gives, in one typed table.

Texts are English: they are read by MTAs and postmasters, and end up in
bounces. A reply is rendered with ``str(SmtpReply.X)`` (the form aiosmtpd
handlers return).

Unknown, revoked, expired and malformed reply tokens all get the very same
``UNKNOWN_RECIPIENT`` line, so probing addresses teaches nothing.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["SmtpReply"]


class SmtpReply(Enum):
    OK = (250, "2.0.0", "OK")
    RECIPIENT_OK = (250, "2.1.5", "Recipient OK")
    # Same text for every unknown, revoked or invalid token.
    UNKNOWN_RECIPIENT = (550, "5.1.1", "No such recipient here")
    SENDER_NOT_AUTHORISED = (550, "5.7.1", "Sender not authorised for this recipient")
    MESSAGE_TOO_BIG = (552, "5.3.4", "Message too big")
    TOO_MANY_RECIPIENTS = (452, "4.5.3", "Too many recipients")
    # Answered whenever we could not commit the message durably: the sender's
    # MTA keeps it and retries (RFC 5321 section 6.1).
    TRY_AGAIN_LATER = (451, "4.3.0", "Temporary failure, please try again later")
    CONTENT_REJECTED = (554, "5.6.0", "Message content not accepted")
    # Refused before any parse: more parts or header lines than any reply needs.
    TOO_COMPLEX = (554, "5.6.0", "Message structure too complex (parts or header lines)")
    # Said at connect, then the connection is closed.
    PEER_NOT_ALLOWED = (554, "5.7.1", "Connection refused: not an allowed peer")
    TOO_MANY_CONNECTIONS = (421, "4.7.0", "Too many connections, try again later")
    # Said mid-DATA, then the connection is closed (no CRLF within any sane line length).
    LINE_TOO_LONG = (421, "4.7.0", "Line too long, closing connection")

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"
