"""What the parser makes of an inbound mail: plain, frozen data (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "AuthVerdict",
    "BounceRecipient",
    "Command",
    "InboundAttachment",
    "InboundMail",
    "Kind",
    "RefusalReason",
    "RefusedAttachment",
]


class Kind(StrEnum):
    HUMAN = "human"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    LIST = "list"
    LOOP = "loop"


class Command(StrEnum):
    """Quick answers an agent can give alone on the first line of a reply."""

    JEMENOCCUPE = "jemenoccupe"
    TRAITEE = "traitee"
    PASLEBONINTERLOCUTEUR = "pasleboninterlocuteur"


class RefusalReason(StrEnum):
    TYPE_NOT_ALLOWED = "type_not_allowed"
    TYPE_MISMATCH = "type_mismatch"
    TOO_BIG = "too_big"
    DANGEROUS_EXTENSION = "dangerous_extension"
    DOUBLE_EXTENSION = "double_extension"
    ARCHIVE = "archive"


@dataclass(frozen=True, slots=True)
class InboundAttachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RefusedAttachment:
    filename: str
    content_type: str
    size: int
    reason: RefusalReason


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    dmarc_pass: bool
    dkim_aligned_pass: bool
    reason: str

    @property
    def authenticated(self) -> bool:
        return self.dmarc_pass or self.dkim_aligned_pass


@dataclass(frozen=True, slots=True)
class BounceRecipient:
    address: str
    action: str
    status: str


@dataclass(frozen=True, slots=True)
class InboundMail:
    message_id: str | None
    from_addresses: tuple[str, ...]
    # The raw value of the single From field (for check_sender); None when
    # there is no From or more than one From field.
    from_header: str | None
    subject: str
    kind: Kind
    kind_reason: str
    text: str  # the reply without quoted history, signature or command line
    command: Command | None
    attachments: tuple[InboundAttachment, ...]
    refused_attachments: tuple[RefusedAttachment, ...]
    content_hash: str
    defects: tuple[str, ...]
    auth: AuthVerdict
    bounce_recipients: tuple[BounceRecipient, ...] = ()
    bounced_message_id: str | None = None
    # Any other command on the first line (« !inviter CPAM 95 »), as written, one line;
    # the room's command set reads it (`command` stays the quick answers).
    command_line: str | None = None
