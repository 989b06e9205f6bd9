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

import codecs
import functools
import hashlib
import html as html_lib
import re
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser, HeaderParser
from enum import StrEnum
from html.parser import HTMLParser
from typing import TypeVar

from bridge.addressing import normalise_address, parse_single_mailbox
from bridge.render import LOOP_HEADER

__all__ = [
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

_T = TypeVar("_T")
_D = TypeVar("_D")

MAX_TEXT_CHARS = 20_000  # longest reply text handed to Matrix
_MAX_DECODED_CHARS = 1_000_000  # bound on any text part before any regex runs
_MAX_DEPTH = 64
_MAX_PARTS = 500
_MAX_SUBJECT_CHARS = 300
_TRUNCATED_NOTE = "[… message tronqué]"
_QUOTE_SENTINEL = "\x1e"  # marks "quoted history starts here" in converted HTML


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


# --------------------------------------------------------------------------- small helpers

_MSGID_RE = re.compile(r"<([!-;=?-~]{1,200})@([!-;=?-~]{1,200})>")
_WS_RE = re.compile(r"\s+")
# Codecs Python knows that are no mail charset and could rebuild markup.
_REFUSED_CODECS = {"utf-7", "unicode-escape", "raw-unicode-escape", "idna", "punycode"}
_LATIN_LABELS = {"iso8859-1", "latin-1", "cp1252", "iso8859-15", "ascii"}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _is_unsafe_char(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")


def _one_line(value: str, max_chars: int) -> str:
    cleaned = "".join(" " if _is_unsafe_char(c) else c for c in value)
    cleaned = _WS_RE.sub(" ", cleaned).strip()
    return cleaned[:max_chars]


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


def _decode_words(raw: str) -> str:
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
            out.append(_decode_bytes(chunk, charset, []))
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


def _decode_bytes(data: bytes, charset: str | None, defects: list[str]) -> str:
    """Decode with the declared charset, else UTF-8, else Windows-1252 (never fails)."""
    name = _codec(charset)
    if charset and name is None:
        defects.append(f"unknown or refused charset {_one_line(charset, 40)!r}")
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


def _headers(msg: Message) -> list[tuple[str, str]]:
    return [(name.lower(), _raw_value(value)) for name, value in msg.raw_items()]


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def normalise_message_id(raw: str) -> str | None:
    value = raw.strip()
    match = _MSGID_RE.fullmatch(value)
    return value if match and len(value) <= 250 else None


# --------------------------------------------------------------------------- classification

_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(réponse automatique|reponse automatique|automatic reply|auto:|autoreply|"
    r"absence du bureau|out of office|message d'absence|accusé de réception automatique)",
    re.IGNORECASE,
)
_BOUNCE_SENDER_RE = re.compile(r"^(mailer-daemon|postmaster)@", re.IGNORECASE)


def _classify(
    msg: Message,
    headers: list[tuple[str, str]],
    subject: str,
    from_addresses: tuple[str, ...],
    mail_from: str | None,
    max_received: int,
) -> tuple[Kind, str]:
    names = {k for k, _ in headers}
    if LOOP_HEADER.lower() in names:
        return Kind.LOOP, f"{LOOP_HEADER} header present"
    received = len(_values(headers, "received"))
    if received > max_received:
        return Kind.LOOP, f"{received} Received headers"
    ctype = _content_type(msg)
    if ctype == "multipart/report":
        report = str(_safe(lambda: msg.get_param("report-type"), "") or "").lower()
        if report == "disposition-notification":
            return Kind.AUTO_REPLY, "read receipt (multipart/report; disposition-notification)"
        return Kind.BOUNCE, f"multipart/report; report-type={_one_line(report, 40)}"
    for part in _walk(msg, []):
        if _content_type(part, "") in (
            "message/delivery-status",
            "message/global-delivery-status",
        ):
            return Kind.BOUNCE, "delivery-status part"
    if mail_from is not None and mail_from.strip() in ("", "<>"):
        return Kind.BOUNCE, "empty envelope sender"
    if any(v.strip() == "<>" for v in _values(headers, "return-path")):
        return Kind.BOUNCE, "empty Return-Path"
    if any(_BOUNCE_SENDER_RE.match(a) for a in from_addresses):
        return Kind.BOUNCE, "From a mailer daemon"
    for value in _values(headers, "auto-submitted"):
        keyword = value.split(";")[0].strip().lower()
        if keyword != "no":
            return Kind.AUTO_REPLY, f"Auto-Submitted: {_one_line(keyword, 40)}"
    for name in ("x-autoreply", "x-autorespond", "x-autogenerated"):
        if name in names:
            return Kind.AUTO_REPLY, f"{name} header"
    for value in _values(headers, "precedence"):
        prec = value.strip().lower()
        if prec == "list":
            return Kind.LIST, "Precedence: list"
        if prec in ("bulk", "junk", "auto_reply"):
            return Kind.AUTO_REPLY, f"Precedence: {prec}"
    for name in ("list-id", "list-unsubscribe", "list-post"):
        if name in names:
            return Kind.LIST, f"{name} header"
    if _AUTO_SUBJECT_RE.match(subject):
        return Kind.AUTO_REPLY, "auto-reply subject"
    return Kind.HUMAN, "no automation marker"


def _safe(fn: Callable[[], _T], default: _D) -> _T | _D:
    """Call a zero-argument parser accessor; header parsing bugs become the default."""
    try:
        return fn()
    except Exception:
        return default


def _content_type(part: Message, default: str = "text/plain") -> str:
    return _safe(part.get_content_type, default)


def _payload(part: Message) -> object:
    return _safe(part.get_payload, None)


# --------------------------------------------------------------------------- MIME walking


def _walk(msg: Message, defects: list[str]) -> list[Message]:
    """Leaves in document order; iterative, bounded in depth and count.

    message/* parts are leaves: a forwarded mail is an attachment, never body.
    """
    leaves: list[Message] = []
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > _MAX_PARTS:
            defects.append("too many MIME parts")
            break
        maintype = _content_type(part).partition("/")[0]
        payload = _payload(part)
        if maintype == "multipart" and isinstance(payload, list):
            if depth >= _MAX_DEPTH:
                defects.append("MIME tree too deep")
                continue
            stack.extend((p, depth + 1) for p in reversed(payload) if isinstance(p, Message))
            continue
        leaves.append(part)
    return leaves


def _parents(msg: Message) -> dict[int, str]:
    """id(part) → content type of its parent (bounded like :func:`_walk`)."""
    parents: dict[int, str] = {}
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack and len(parents) < _MAX_PARTS:
        part, depth = stack.pop()
        payload = _payload(part)
        ctype = _content_type(part)
        if ctype.startswith("multipart/") and isinstance(payload, list) and depth < _MAX_DEPTH:
            for child in payload:
                if isinstance(child, Message):
                    parents[id(child)] = ctype
                    stack.append((child, depth + 1))
    return parents


def _payload_bytes(part: Message) -> bytes:
    data = _safe(lambda: part.get_payload(decode=True), None)
    if isinstance(data, bytes):
        return data
    payload = _safe(lambda: part.get_payload(), "")
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    if isinstance(payload, list):
        # message/*: serialise what the parser kept, best effort.
        return b"".join(
            _safe(functools.partial(m.as_bytes, policy=policy.compat32), b"")
            for m in payload
            if isinstance(m, Message)
        )
    return b""


def _part_text(part: Message, defects: list[str]) -> str:
    data = _payload_bytes(part)
    charset = _safe(lambda: part.get_content_charset(), None)
    text = _decode_bytes(data, charset if isinstance(charset, str) else None, defects)
    if len(text) > _MAX_DECODED_CHARS:
        defects.append("text part truncated")
        text = text[:_MAX_DECODED_CHARS]
    return text


def _disposition(part: Message) -> str:
    return str(_safe(part.get_content_disposition, "") or "")


def _is_attachment(part: Message) -> bool:
    if _disposition(part) == "attachment":
        return True
    return bool(_safe(lambda: part.get_filename(), None))


# --------------------------------------------------------------------------- HTML → text


class _HtmlToText(HTMLParser):
    _SKIP = _words(
        "script style head title template noscript svg math iframe object "
        "textarea select xmp noembed noframes"
    )
    _BLOCK = _words(
        "p div tr table ul ol h1 h2 h3 h4 h5 h6 pre hr section article header "
        "footer address dl dt dd"
    )
    _PARAGRAPHS = _words("p table ul ol pre h1 h2 h3 h4 h5 h6")
    _QUOTE_MARKERS = (
        "gmail_quote",
        "moz-cite-prefix",
        "yahoo_quoted",
        "divrplyfwdmsg",
        "appendonsend",
        "mail-quote",
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current = ""
        self.prefix = ""
        self.skip = 0
        self.quote = 0
        self.pre = 0
        self.href: str | None = None
        self.link_text = ""

    def _newline(self) -> None:
        self.lines.append(self.prefix + self.current if self.current else "")
        self.current = ""

    def _soft_newline(self) -> None:
        if self.current:
            self._newline()

    def _paragraph(self) -> None:
        self._soft_newline()
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def _write(self, text: str) -> None:
        if not text:
            return
        if not self.current:
            self.prefix = "> " * self.quote
        self.current += text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        marker = " ".join(v or "" for k, v in attrs if k in ("class", "id")).lower()
        if any(m in marker for m in self._QUOTE_MARKERS):
            self._newline()
            self.lines.append(_QUOTE_SENTINEL)
        if tag == "br":
            self._newline()
        elif tag == "li":
            self._soft_newline()
            self._write("- ")
        elif tag == "blockquote":
            self._paragraph()
            self.quote += 1
        elif tag in self._BLOCK:
            self._soft_newline()
            if tag == "pre":
                self.pre += 1
        elif tag == "a":
            href = next((v for k, v in attrs if k == "href" and v), None)
            if href and re.match(r"(?i)(https?:|mailto:)", href.strip()):
                self.href = href.strip()
                self.link_text = ""
        elif tag == "img":
            alt = next((v for k, v in attrs if k == "alt" and v), None)
            if alt:
                self._write(f"[{_one_line(alt, 80)}]")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            return  # <svg/> has no content to skip
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag == "blockquote":
            self._paragraph()
            self.quote = max(0, self.quote - 1)
        elif tag in self._PARAGRAPHS:
            self._paragraph()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag in self._BLOCK or tag == "li":
            self._soft_newline()
        elif tag == "a" and self.href:
            if self.href.rstrip("/") not in self.link_text and not self.href.startswith("mailto:"):
                self._write(f" ({self.href})")
            self.href = None

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.pre:
            data = _WS_RE.sub(" ", data)
            if not self.current:
                data = data.lstrip()
        if self.href is not None:
            self.link_text += data
        parts = data.split("\n")
        for i, chunk in enumerate(parts):
            if i:
                self._newline()
            self._write(chunk)

    def text(self) -> str:
        if self.current:
            self._newline()
        return "\n".join(line.rstrip() for line in self.lines)


def html_to_text(markup: str) -> str:
    """Plain text of an HTML body; quotes become ``> `` lines. Never raises."""
    markup = markup[:_MAX_DECODED_CHARS]
    parser = _HtmlToText()
    try:
        parser.feed(markup)
        parser.close()
        return parser.text()
    except Exception:
        stripped = re.sub(r"<[^>]*>", " ", markup)
        return html_lib.unescape(stripped)


# --------------------------------------------------------------------------- quotes, command

_ORIGINAL_RE = re.compile(
    r"^-{2,}\s*(original message|message d['’]origine|courriel original)\s*-{2,}$", re.IGNORECASE
)
_ATTRIBUTION_FR_RE = re.compile(r"^Le\s.{1,300}\sa\s+[ée]crit\s*:?$", re.IGNORECASE)
_ATTRIBUTION_EN_RE = re.compile(r"^On\s.{1,300}\swrote\s*:?$", re.IGNORECASE)
_OUTLOOK_FROM_RE = re.compile(r"^\**\s*(de|from)\s*:\**\s*\S", re.IGNORECASE)
_OUTLOOK_FIELD_RE = re.compile(
    r"^\**\s*(envoyé|envoye|sent|date|à|a|to|objet|subject|cc)\s*:", re.IGNORECASE
)


def _is_attribution(lines: list[str], i: int) -> bool:
    first = lines[i].strip()
    if not re.match(r"(?i)(le|on)\s", first):
        return False
    joined = first
    for extra in range(3):
        if extra:
            if i + extra >= len(lines):
                break
            joined = f"{joined} {lines[i + extra].strip()}"
        if re.search(r"\d", joined) and (
            _ATTRIBUTION_FR_RE.match(joined) or _ATTRIBUTION_EN_RE.match(joined)
        ):
            return True
    return False


def _is_outlook_header(lines: list[str], i: int) -> bool:
    if not _OUTLOOK_FROM_RE.match(lines[i].strip()):
        return False
    following = [ln.strip() for ln in lines[i + 1 : i + 6]]
    return sum(1 for ln in following if _OUTLOOK_FIELD_RE.match(ln)) >= 2


def strip_quoted(text: str) -> str:
    """Cut quoted history and signature from a reply; drop ``>`` lines; trim."""
    lines = text.split("\n")
    cut = len(lines)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if (
            stripped == _QUOTE_SENTINEL
            or line.rstrip() == "--"
            or _ORIGINAL_RE.match(stripped)
            or _is_attribution(lines, i)
            or _is_outlook_header(lines, i)
        ):
            cut = i
            break
    kept = [ln.rstrip() for ln in lines[:cut] if not ln.startswith(">")]
    # Outlook puts a line of underscores above its header block.
    while kept and (not kept[-1].strip() or re.fullmatch(r"_{8,}", kept[-1].strip())):
        kept.pop()
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(kept))
    return out.strip("\n").strip()


_COMMANDS = {f"!{c.value}": c for c in Command}


def _command_of(line: str) -> Command | None:
    key = "".join(line.split()).casefold()
    key = "".join(c for c in unicodedata.normalize("NFKD", key) if not unicodedata.combining(c))
    return _COMMANDS.get(key)


# Angle-bracketed URLs and addresses are kept; any other '<' that could open a
# tag becomes '‹' so no text we hand over can be read as markup.
_TAGLIKE_RE = re.compile(
    r"(<(?:https?://|mailto:)[^\s<>\"']*>|<[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+>)|<(?=[A-Za-z/!?])"
)


def _defang(text: str) -> str:
    return _TAGLIKE_RE.sub(lambda m: m.group(1) or "‹", text)


def _clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in text if c in "\n\t" or not _is_unsafe_char(c))


# --------------------------------------------------------------------------- attachments

_DANGEROUS_EXT = _words(
    "exe com bat cmd scr pif cpl msi msp mst dll sys js jse vbs vbe wsf "
    "wsh ws hta ps1 psm1 jar lnk reg inf scf url iso img vhd vhdx appx "
    "msix apk app sh bash py pl html htm xhtml svg shtml mht mhtml docm "
    "xlsm pptm dotm xltm xlam ppam one chm library-ms settingcontent-ms "
    "application gadget xll website"
)
_ARCHIVE_EXT = _words(
    "zip rar 7z tar gz tgz bz2 tbz xz txz lz lzh lzma z cab arj ace zst cpio sit sitx zipx jar war"
)
_DOCUMENT_TYPES = {
    "pdf": "application/pdf",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "txt": "text/plain",
    "csv": "text/csv",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "doc": "application/msword",
    "xls": "application/vnd.ms-excel",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
_TYPE_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "application/x-pdf": "application/pdf",
}
_ARCHIVE_TYPES = _words(
    "application/zip application/x-zip-compressed "
    "application/x-rar-compressed application/vnd.rar "
    "application/x-7z-compressed application/gzip application/x-gzip "
    "application/x-tar application/x-bzip2 application/x-xz "
    "application/vnd.ms-cab-compressed application/java-archive"
)
_ZIP_CONTAINER_EXT = frozenset({"docx", "xlsx", "pptx", "odt", "ods", "odp"})
_MAGIC = (
    (b"MZ", "executable"),
    (b"\x7fELF", "executable"),
    (b"PK\x03\x04", "zip"),
    (b"Rar!", "archive"),
    (b"7z\xbc\xaf\x27\x1c", "archive"),
    (b"\x1f\x8b", "archive"),
    (b"MSCF", "archive"),
)
_FORBIDDEN_NAME_CHARS = re.compile(r'[<>:"|?*/\\]')


def sanitise_filename(raw: str | None) -> str:
    """A display-safe file name: no path, controls, bidi tricks or trailing dots."""
    name = unicodedata.normalize("NFC", raw or "")
    name = "".join(c for c in name if not _is_unsafe_char(c))
    name = re.split(r"[/\\]", name)[-1]
    name = _FORBIDDEN_NAME_CHARS.sub("_", name)
    name = _WS_RE.sub(" ", name).strip(" .")
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem[: 110 - len(ext)]}.{ext}" if dot and len(ext) <= 10 else name[:120]
    return name or "piece-jointe"


def _extensions(name: str) -> list[str]:
    parts = name.lower().split(".")
    return [p.strip() for p in parts[1:]] if len(parts) > 1 else []


def _check_attachment(
    part: Message, max_bytes: int, allowed: frozenset[str]
) -> InboundAttachment | RefusedAttachment:
    raw_name = _safe(lambda: part.get_filename(), None)
    name = sanitise_filename(raw_name if isinstance(raw_name, str) else None)
    declared = _content_type(part, "application/octet-stream")
    declared = _TYPE_ALIASES.get(declared, declared)
    data = _payload_bytes(part)
    exts = _extensions(name)
    last = exts[-1] if exts else ""
    ctype = declared
    if declared == "application/octet-stream" and last in _DOCUMENT_TYPES:
        ctype = _DOCUMENT_TYPES[last]

    def refuse(reason: RefusalReason) -> RefusedAttachment:
        return RefusedAttachment(name, ctype, len(data), reason)

    known = _DANGEROUS_EXT | _ARCHIVE_EXT | _DOCUMENT_TYPES.keys()
    if last in _DANGEROUS_EXT:
        if len(exts) >= 2 and exts[-2] in known:
            return refuse(RefusalReason.DOUBLE_EXTENSION)
        return refuse(RefusalReason.DANGEROUS_EXTENSION)
    if last in _ARCHIVE_EXT or ctype in _ARCHIVE_TYPES:
        return refuse(RefusalReason.ARCHIVE)
    if len(exts) >= 2 and exts[-2] in _DANGEROUS_EXT | _ARCHIVE_EXT:
        return refuse(RefusalReason.DOUBLE_EXTENSION)
    if len(data) > max_bytes:
        return refuse(RefusalReason.TOO_BIG)
    if ctype not in allowed:
        return refuse(RefusalReason.TYPE_NOT_ALLOWED)
    if last in _DOCUMENT_TYPES and _DOCUMENT_TYPES[last] != ctype:
        return refuse(RefusalReason.TYPE_MISMATCH)
    for magic, what in _MAGIC:
        if data.startswith(magic):
            if what == "executable":
                return refuse(RefusalReason.DANGEROUS_EXTENSION)
            if what == "archive" or last not in _ZIP_CONTAINER_EXT:
                return refuse(RefusalReason.ARCHIVE)
    return InboundAttachment(name, ctype, len(data), hashlib.sha256(data).hexdigest(), data)


# --------------------------------------------------------------------------- authentication


def _strip_comments(value: str) -> str:
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if not depth:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if not depth:
                out.append(ch)
            continue
        if quoted:
            out.append(ch)
            if ch == '"':
                quoted = False
            continue
        if ch == "(":
            depth += 1
            continue
        if ch == ")" and depth:
            depth -= 1
            continue
        if depth:
            continue
        if ch == '"':
            quoted = True
        out.append(ch)
    return "".join(out)


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _parse_auth_header(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]] | None:
    """RFC 8601 ``authserv-id; method=result prop=value ...`` → (id, results)."""
    body = _strip_comments(value.replace("\r", " ").replace("\n", " "))
    segments = _split_outside_quotes(body, ";")
    head = segments[0].split()
    if not head:
        return None
    authserv_id = head[0].lower()
    results: list[tuple[str, str, dict[str, str]]] = []
    for segment in segments[1:]:
        segment = re.sub(r"\s*=\s*", "=", segment.strip())
        tokens = [t for t in _split_outside_quotes(segment, " ") if t]
        if not tokens or "=" not in tokens[0]:
            continue
        method, _, result = tokens[0].partition("=")
        props: dict[str, str] = {}
        for token in tokens[1:]:
            key, eq, val = token.partition("=")
            if eq:
                props.setdefault(key.lower(), val.strip('"').lower())
        results.append((method.split("/")[0].lower(), result.strip('"').lower(), props))
    return authserv_id, results


# Registries: a signature by one of these is not "the sender's organisation".
_PUBLIC_SUFFIXES = _words(
    "gouv.fr asso.fr com.fr nom.fr tm.fr presse.fr co.uk org.uk com.au co.nz com.br co.jp eu.org"
)


def dkim_aligned(signing_domain: str, from_domain: str) -> bool:
    """DKIM ``d=`` aligned with the From domain: equal, or a parent of it.

    A parent must keep at least two labels and not be a registry suffix such
    as ``gouv.fr`` (the plain "last two labels" rule would align every
    ``*.gouv.fr`` sender with every other one).
    """
    d = signing_domain.strip().strip(".").lower()
    f = from_domain.strip().strip(".").lower()
    if not d or not f or "." not in d:
        return False
    if d == f:
        return True
    return f.endswith("." + d) and d not in _PUBLIC_SUFFIXES


def auth_results(msg: Message, trusted_authserv_ids: Collection[str]) -> AuthVerdict:
    """Verdict from ``Authentication-Results`` written by our own border MTA only.

    Headers are read top to bottom. Untrusted authserv-ids are ignored
    wherever they are (an internal hop may add one above ours). For each
    trusted id only the *topmost* header counts: our MTA prepends its header
    above anything the sender wrote, so a lower header with our id is a forgery
    the MTA failed to remove.
    """
    trusted = {t.strip().lower() for t in trusted_authserv_ids if t.strip()}
    if not trusted:
        return AuthVerdict(False, False, "no trusted authserv-id configured")
    try:
        headers = _headers(msg)
    except Exception:
        return AuthVerdict(False, False, "unreadable headers")
    froms = _values(headers, "from")
    parsed_from = parse_single_mailbox(froms[0]) if len(froms) == 1 else None
    if parsed_from is None:
        return AuthVerdict(False, False, "no single valid From address")
    from_domain = parsed_from[1].rpartition("@")[2]
    seen: set[str] = set()
    dmarc = dkim = False
    notes: list[str] = []
    for name, value in headers:
        if name != "authentication-results":
            continue
        parsed = _parse_auth_header(value)
        if parsed is None or parsed[0] not in trusted:
            continue
        authserv_id, results = parsed
        if authserv_id in seen:
            notes.append(f"ignored lower header from {authserv_id}")
            continue
        seen.add(authserv_id)
        for method, result, props in results:
            if method == "dmarc" and result == "pass":
                header_from = props.get("header.from")
                if header_from is None or header_from == from_domain:
                    dmarc = True
            elif method == "dkim" and result == "pass":
                d = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
                if d and dkim_aligned(d, from_domain):
                    dkim = True
    if not seen:
        reason = "no Authentication-Results from a trusted authserv-id"
    elif dmarc or dkim:
        reason = "dmarc=pass" if dmarc else "aligned dkim=pass"
    else:
        reason = "neither dmarc=pass nor aligned dkim=pass"
    if notes:
        reason += "; " + "; ".join(notes)
    return AuthVerdict(dmarc, dkim, reason)


# --------------------------------------------------------------------------- bounces


def _bounce_details(
    leaves: list[Message],
) -> tuple[tuple[BounceRecipient, ...], str | None]:
    recipients: list[BounceRecipient] = []
    original: str | None = None
    for part in leaves:
        ctype = str(_content_type(part, ""))
        payload = _payload(part)
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            blocks = payload if isinstance(payload, list) else []
            for block in blocks[1:]:
                if not isinstance(block, Message):
                    continue
                fields = _headers(block)
                final = _values(fields, "final-recipient") or _values(fields, "original-recipient")
                if not final:
                    continue
                address = final[0].partition(";")[2].strip().strip("<>")
                normalised = normalise_address(address)
                action = (_values(fields, "action") or [""])[0]
                status = (_values(fields, "status") or [""])[0]
                recipients.append(
                    BounceRecipient(
                        normalised or _one_line(address, 254).lower(),
                        _one_line(action, 40).lower(),
                        _one_line(status, 40),
                    )
                )
        elif ctype in ("message/rfc822", "text/rfc822-headers") and original is None:
            inner: Message | None = None
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                inner = payload[0]
            elif isinstance(payload, str):
                inner = HeaderParser(policy=policy.compat32).parsestr(payload[:100_000])
            if inner is not None:
                ids = _values(_headers(inner), "message-id")
                original = normalise_message_id(ids[0]) if ids else None
    return tuple(recipients[:100]), original


# --------------------------------------------------------------------------- entry point


def _content_hash(text: str, command: Command | None, attachments: list[InboundAttachment]) -> str:
    h = hashlib.sha256(b"aplus-inbound-v1\x00")
    h.update(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass"))
    h.update(b"\x00" + (command.value if command else "").encode("ascii"))
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


_ANGLE_ADDR_RE = re.compile(r"<([^<>\s\"]+@[^<>\s\"]+)>")
_BARE_ADDR_RE = re.compile(r"[^\s<>,;:\"()=?]+@[^\s<>,;:\"()=?]+")


def _from_addresses(from_values: list[str]) -> tuple[str, ...]:
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
            found.append(normalise_address(spec) or _one_line(spec, 254).lower())
    return tuple(dict.fromkeys(a for a in found if a))


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
    headers = _headers(msg)

    ids = _values(headers, "message-id")
    message_id = normalise_message_id(ids[0]) if len(ids) == 1 else None
    if len(ids) > 1:
        defects.append("several Message-ID fields")
    elif ids and message_id is None:
        defects.append("malformed Message-ID")

    from_values = _values(headers, "from")
    from_header = from_values[0] if len(from_values) == 1 else None
    if len(from_values) > 1:
        defects.append("several From fields")
    from_addresses = _from_addresses(from_values)
    if len(from_addresses) > 1:
        defects.append("several From addresses")

    subjects = _values(headers, "subject")
    subject = _one_line(_decode_words(subjects[0]), _MAX_SUBJECT_CHARS) if subjects else ""

    kind, reason = _classify(msg, headers, subject, from_addresses, mail_from, max_received)

    leaves = _walk(msg, defects)
    parents = _parents(msg)
    plain: list[str] = []
    html: list[str] = []
    attachments: list[InboundAttachment] = []
    refused: list[RefusedAttachment] = []
    for part in leaves:
        ctype = _content_type(part)
        if ctype.startswith("multipart/"):
            ctype = "text/plain"  # broken multipart (no boundary): fall back to text
        if not _is_attachment(part) and ctype in ("text/plain", "text/html"):
            (plain if ctype == "text/plain" else html).append(_part_text(part, defects))
            continue
        if part is msg and ctype.startswith("text/"):
            continue  # a single-part non-text/plain body: nothing to attach
        if parents.get(id(part)) == "multipart/related" and _disposition(part) != "attachment":
            continue  # images referenced by the HTML (signature logos)
        if kind is not Kind.HUMAN:
            continue
        result = _check_attachment(part, max_attachment_bytes, allowed)
        if isinstance(result, InboundAttachment):
            attachments.append(result)
        else:
            refused.append(result)

    if plain:
        body = "\n\n".join(_clean_text(p) for p in plain)
    elif html:
        body = "\n\n".join(html_to_text(h) for h in html)
    else:
        body = ""
    text = _defang(_clean_text(strip_quoted(body)))

    command: Command | None = None
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None:
        command = _command_of(lines[first])
        if command is not None:
            text = "\n".join(lines[first + 1 :]).strip()
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS].rstrip() + "\n" + _TRUNCATED_NOTE
        defects.append("text truncated")

    bounce_recipients: tuple[BounceRecipient, ...] = ()
    bounced_id: str | None = None
    if kind is Kind.BOUNCE:
        bounce_recipients, bounced_id = _bounce_details(leaves)

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
        content_hash=_content_hash(text, command, attachments),
        defects=tuple(dict.fromkeys(defects)),
        auth=auth_results(msg, trusted),
        bounce_recipients=bounce_recipients,
        bounced_message_id=bounced_id,
    )
