"""Reply addresses and the sender check for email-only agents (pure).

An email-only agent gets one secret reply address per demande:
``reply+<token>@<reply_domain>``. The token is bound to (demande, agent email);
the database keeps only :func:`token_digest` of it. A reply is accepted only if
the token is known *and* the message's From is the bound address
(:func:`check_sender`); matching on From alone would be spoofable.

Tokens are lowercase base32 without padding because MTAs may case-fold the
local part of an address; 20 random bytes give 160 bits and 32 characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata
from email.errors import HeaderParseError
from email.header import decode_header

__all__ = [
    "REPLY_PREFIX",
    "TOKEN_LENGTH",
    "check_sender",
    "digest_matches",
    "extract_token",
    "is_valid_token",
    "new_token",
    "normalise_address",
    "parse_single_mailbox",
    "reply_address",
    "token_digest",
]

REPLY_PREFIX = "reply+"
_TOKEN_BYTES = 20
TOKEN_LENGTH = 32  # base32 of 20 bytes, no padding needed
_TOKEN_RE = re.compile(rf"[a-z2-7]{{{TOKEN_LENGTH}}}")
# Domain-separation prefix: the digest of a token is useless as anything else.
_DIGEST_PREFIX = b"aplus-reply-token-v1\x00"

# Conservative ASCII address grammar. Agents of public bodies have plain
# addresses; quoted local parts, IP literals and SMTPUTF8 are refused on
# purpose (they are where parser disagreements live).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_RE = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_ENCODED_WORD_RE = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
# Something that looks like an address inside a display name.
_ADDRESS_LIKE_RE = re.compile(r"[^\s<>\"'(),;:@]+@[^\s<>\"'(),;:@]+")
_FOLDING_RE = re.compile(r"\r?\n(?=[ \t])")


def new_token() -> str:
    """A fresh reply token: 160 bits from :mod:`secrets`, lowercase base32."""
    raw = secrets.token_bytes(_TOKEN_BYTES)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def is_valid_token(token: str) -> bool:
    return _TOKEN_RE.fullmatch(token) is not None


def _check_domain(domain: str) -> str:
    if not domain.isascii() or _DOMAIN_RE.fullmatch(domain) is None:
        raise ValueError("invalid reply domain")
    return domain.lower()


def reply_address(token: str, domain: str) -> str:
    """``reply+<token>@<domain>``; raises ``ValueError`` on a bad token or domain."""
    if not is_valid_token(token):
        raise ValueError("invalid reply token")
    return f"{REPLY_PREFIX}{token}@{_check_domain(domain)}"


def extract_token(rcpt: str, domain: str) -> str | None:
    """The token of an envelope recipient, or ``None`` for anything unexpected.

    Strict on purpose: exactly one ``@``, the reply domain (case-insensitive,
    no trailing dot), the ``reply+`` prefix and a token of the right alphabet
    and length. No angle brackets, spaces, sub-address or second ``+``.
    """
    try:
        our_domain = _check_domain(domain)
    except ValueError:
        return None
    if not rcpt.isascii() or rcpt.count("@") != 1:
        return None
    local, _, rcpt_domain = rcpt.partition("@")
    if rcpt_domain.lower() != our_domain:
        return None
    local = local.lower()
    if not local.startswith(REPLY_PREFIX):
        return None
    token = local[len(REPLY_PREFIX) :]
    return token if is_valid_token(token) else None


def token_digest(token: str) -> str:
    """The only form of a token the database stores (hex SHA-256)."""
    data = _DIGEST_PREFIX + token.lower().encode("ascii", "replace")
    return hashlib.sha256(data).hexdigest()


def digest_matches(token: str, stored_digest: str) -> bool:
    """Constant-time comparison of a presented token with a stored digest."""
    return hmac.compare_digest(token_digest(token), stored_digest.lower())


def normalise_address(addr_spec: str) -> str | None:
    """Lowercased ``local@domain`` if it is a plain ASCII address, else ``None``.

    The local part is compared case-insensitively too: every mail system our
    agents use treats it so, and the binding is ours to define. Nothing else is
    folded (no dot or ``+tag`` removal): that would widen who matches.
    """
    if not addr_spec.isascii() or addr_spec.count("@") != 1:
        return None
    local, _, domain = addr_spec.partition("@")
    if len(local) > 64 or len(domain) > 253:
        return None
    if _LOCAL_RE.fullmatch(local) is None or _DOMAIN_RE.fullmatch(domain) is None:
        return None
    if "=?" in addr_spec:
        return None
    return f"{local}@{domain}".lower()


def _decode_display_name(raw: str) -> str | None:
    """Decode RFC 2047 words of a display name; ``None`` if anything is odd."""
    try:
        parts = decode_header(raw)
    except (HeaderParseError, ValueError, LookupError):
        return None
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        try:
            out.append(chunk.decode(charset or "latin-1"))
        except (LookupError, UnicodeDecodeError):
            return None
    return "".join(out)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch != "\t" for ch in text)


def _split_mailbox(value: str) -> tuple[str, str] | None:
    """Split ``[display] <addr>`` or a bare ``addr``; ``None`` on anything else."""
    if "<" not in value and ">" not in value:
        if any(c in value for c in ' \t"(),;:'):
            return None
        return "", value
    if value.count("<") != 1 or value.count(">") != 1 or not value.endswith(">"):
        return None
    display, _, rest = value.partition("<")
    addr = rest[:-1]
    display = display.strip()
    if display.startswith('"'):
        if len(display) < 2 or not display.endswith('"'):
            return None
        inner = display[1:-1]
        # Only the simplest quoted string: no escapes, no embedded quotes.
        if '"' in inner or "\\" in inner:
            return None
        display = inner
    elif any(c in display for c in '",;:@\\'):
        # Unquoted display names with specials are where parsers disagree
        # (parentheses are tolerated: "Marie Durand (CAF 95)" is common).
        return None
    return display, addr


def parse_single_mailbox(header_value: str) -> tuple[str, str] | None:
    """Strictly parse a raw From value holding exactly one mailbox.

    Returns ``(decoded display name, normalised address)`` or ``None``.
    Refused: several mailboxes or groups, comments, encoded words anywhere but
    a whole display name, control characters (also once decoded), quoted
    local parts, and display names showing an address other than the real one.
    """
    value = _FOLDING_RE.sub("", header_value)
    if "\r" in value or "\n" in value or _has_control(value):
        return None
    value = value.strip()
    if not value or len(value) > 998:
        return None
    split = _split_mailbox(value)
    if split is None:
        return None
    raw_display, raw_addr = split
    address = normalise_address(raw_addr.strip())
    if address is None:
        return None
    # Encoded words are legitimate for accented names, but only as whole
    # words: a '=?' that is not a well-formed encoded word is a trick.
    if "=?" in _ENCODED_WORD_RE.sub("", raw_display):
        return None
    display = _decode_display_name(raw_display) if raw_display else ""
    if display is None or _has_control(display) or any(c in display for c in "<>"):
        return None
    for shown in _ADDRESS_LIKE_RE.findall(display):
        if normalise_address(shown.strip(".'\"")) != address:
            return None
    return display.strip(), address


def check_sender(bound_email: str, from_address: str) -> bool:
    """Whether a raw From header value is exactly the agent the token is bound to."""
    bound = normalise_address(bound_email.strip())
    if bound is None:
        return False
    parsed = parse_single_mailbox(from_address)
    if parsed is None:
        return False
    return hmac.compare_digest(parsed[1], bound)
