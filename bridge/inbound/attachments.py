"""Which attachments of a reply may reach the room (pure)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from email.message import Message

from bridge.inbound.mail import InboundAttachment, RefusalReason, RefusedAttachment
from bridge.inbound.mime import content_type_of, payload_bytes, safely
from bridge.inbound.text import WS_RE, is_unsafe_char, words

_DANGEROUS_EXT = words(
    "exe com bat cmd scr pif cpl msi msp mst dll sys js jse vbs vbe wsf "
    "wsh ws hta ps1 psm1 jar lnk reg inf scf url iso img vhd vhdx appx "
    "msix apk app sh bash py pl html htm xhtml svg shtml mht mhtml docm "
    "xlsm pptm dotm xltm xlam ppam one chm library-ms settingcontent-ms "
    "application gadget xll website"
)
_ARCHIVE_EXT = words(
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
_ARCHIVE_TYPES = words(
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
    name = "".join(c for c in name if not is_unsafe_char(c))
    name = re.split(r"[/\\]", name)[-1]
    name = _FORBIDDEN_NAME_CHARS.sub("_", name)
    name = WS_RE.sub(" ", name).strip(" .")
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem[: 110 - len(ext)]}.{ext}" if dot and len(ext) <= 10 else name[:120]
    return name or "piece-jointe"


def _extensions(name: str) -> list[str]:
    parts = name.lower().split(".")
    return [p.strip() for p in parts[1:]] if len(parts) > 1 else []


def file_refusal(
    name: str, declared_type: str, data: bytes, max_bytes: int, allowed: frozenset[str]
) -> tuple[str, RefusalReason | None]:
    """(the file's effective type, why it is refused or None): the same rules for a file
    that comes in by email and for one that goes out by email."""
    declared = _TYPE_ALIASES.get(declared_type, declared_type)
    exts = _extensions(name)
    last = exts[-1] if exts else ""
    ctype = declared
    if declared == "application/octet-stream" and last in _DOCUMENT_TYPES:
        ctype = _DOCUMENT_TYPES[last]
    known = _DANGEROUS_EXT | _ARCHIVE_EXT | _DOCUMENT_TYPES.keys()
    if last in _DANGEROUS_EXT:
        if len(exts) >= 2 and exts[-2] in known:
            return ctype, RefusalReason.DOUBLE_EXTENSION
        return ctype, RefusalReason.DANGEROUS_EXTENSION
    if last in _ARCHIVE_EXT or ctype in _ARCHIVE_TYPES:
        return ctype, RefusalReason.ARCHIVE
    if len(exts) >= 2 and exts[-2] in _DANGEROUS_EXT | _ARCHIVE_EXT:
        return ctype, RefusalReason.DOUBLE_EXTENSION
    if len(data) > max_bytes:
        return ctype, RefusalReason.TOO_BIG
    if ctype not in allowed:
        return ctype, RefusalReason.TYPE_NOT_ALLOWED
    if last in _DOCUMENT_TYPES and _DOCUMENT_TYPES[last] != ctype:
        return ctype, RefusalReason.TYPE_MISMATCH
    for magic, what in _MAGIC:
        if data.startswith(magic):
            if what == "executable":
                return ctype, RefusalReason.DANGEROUS_EXTENSION
            if what == "archive" or last not in _ZIP_CONTAINER_EXT:
                return ctype, RefusalReason.ARCHIVE
    return ctype, None


# What a participant reads about a refused file (both directions).
REFUSAL_LABELS = {
    RefusalReason.TYPE_NOT_ALLOWED: "type de fichier non accepté",
    RefusalReason.TYPE_MISMATCH: "type de fichier incohérent",
    RefusalReason.TOO_BIG: "trop volumineuse",
    RefusalReason.DANGEROUS_EXTENSION: "type de fichier dangereux",
    RefusalReason.DOUBLE_EXTENSION: "double extension suspecte",
    RefusalReason.ARCHIVE: "les archives ne sont pas acceptées",
}


def check_attachment(
    part: Message, max_bytes: int, allowed: frozenset[str]
) -> InboundAttachment | RefusedAttachment:
    raw_name = safely(lambda: part.get_filename(), None)
    name = sanitise_filename(raw_name if isinstance(raw_name, str) else None)
    declared = content_type_of(part, "application/octet-stream")
    data = payload_bytes(part)
    ctype, reason = file_refusal(name, declared, data, max_bytes, allowed)
    if reason is not None:
        return RefusedAttachment(name, ctype, len(data), reason)
    return InboundAttachment(name, ctype, len(data), hashlib.sha256(data).hexdigest(), data)
