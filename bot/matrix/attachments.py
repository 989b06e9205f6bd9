"""Encrypted attachments (`EncryptedFile`): the homeserver only ever holds ciphertext.

Files are encrypted (AES-CTR, SHA-256 of the ciphertext, nio's helpers) before the
upload and checked and decrypted after the download. Downloads use the
authenticated media API (`/_matrix/client/v1/media`), the only one Synapse serves
new media on, and stop reading past the size limit: nothing unbounded is buffered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from bot.ports import AttachmentError as AttachmentError  # declared with the ports

MEDIA_MSGTYPES = ("m.file", "m.image", "m.video", "m.audio")
DEFAULT_FILENAME = "fichier"
DEFAULT_MIMETYPE = "application/octet-stream"


class AttachmentTooLarge(AttachmentError):
    def __init__(self, size: int | None, limit: int) -> None:
        self.size = size
        self.limit = limit
        shown = f" ({_mb(size)})" if size is not None else ""
        super().__init__(
            f"Le fichier{shown} dépasse la taille maximale acceptée par le service "
            f"({_mb(limit)}) : il n'a pas été transmis."
        )


def _mb(size: int) -> str:
    if size < 1024 * 1024:
        return f"{max(1, round(size / 1024))} Ko"
    return f"{size / (1024 * 1024):.1f} Mo".replace(".0 Mo", " Mo").replace(".", ",")


@dataclass(frozen=True, slots=True)
class EncryptedFileRef:
    """What is needed to fetch and decrypt one attachment."""

    url: str
    key: str
    sha256: str
    iv: str
    filename: str
    mimetype: str
    declared_size: int | None

    @property
    def server_and_media_id(self) -> tuple[str, str]:
        server, _, media_id = self.url.removeprefix("mxc://").partition("/")
        return server, media_id


def is_attachment(content: Mapping[str, Any]) -> bool:
    return content.get("msgtype") in MEDIA_MSGTYPES and (
        isinstance(content.get("file"), Mapping) or isinstance(content.get("url"), str)
    )


def declared_size(content: Mapping[str, Any]) -> int | None:
    info = content.get("info")
    size = info.get("size") if isinstance(info, Mapping) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


def parse_encrypted_file(content: Mapping[str, Any]) -> EncryptedFileRef:
    """The `file` object of an m.file / m.image / … content, checked."""
    file = content.get("file")
    if not isinstance(file, Mapping):
        raise AttachmentError(
            "Le fichier n'est pas chiffré : envoyez-le dans le salon chiffré de la demande."
        )
    url = file.get("url")
    key = file.get("key")
    k = key.get("k") if isinstance(key, Mapping) else None
    hashes = file.get("hashes")
    sha256 = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    iv = file.get("iv")
    if not (
        isinstance(url, str)
        and url.startswith("mxc://")
        and "/" in url.removeprefix("mxc://")
        and isinstance(k, str)
        and isinstance(sha256, str)
        and isinstance(iv, str)
    ):
        raise AttachmentError("Pièce jointe mal formée : elle n'a pas pu être lue.")
    info = content.get("info")
    mimetype = info.get("mimetype") if isinstance(info, Mapping) else None
    filename = content.get("filename") or content.get("body")
    return EncryptedFileRef(
        url=url,
        key=k,
        sha256=sha256,
        iv=iv,
        filename=filename if isinstance(filename, str) and filename.strip() else DEFAULT_FILENAME,
        mimetype=mimetype if isinstance(mimetype, str) and mimetype else DEFAULT_MIMETYPE,
        declared_size=declared_size(content),
    )


def decrypt(ref: EncryptedFileRef, ciphertext: bytes) -> bytes:
    try:
        return bytes(decrypt_attachment(ciphertext, ref.key, ref.sha256, ref.iv))
    except Exception as exc:  # nio raises EncryptionError or ValueError on a bad file
        raise AttachmentError("Le fichier n'a pas pu être déchiffré.") from exc


def encrypt(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Ciphertext and the `EncryptedFile` fields except `url`."""
    ciphertext, keys = encrypt_attachment(data)
    return bytes(ciphertext), dict(keys)


def msgtype_for(mimetype: str) -> str:
    if mimetype.startswith("image/"):
        return "m.image"
    if mimetype.startswith("video/"):
        return "m.video"
    if mimetype.startswith("audio/"):
        return "m.audio"
    return "m.file"


def file_content(
    file: Mapping[str, Any],
    *,
    filename: str,
    mimetype: str,
    size: int,
    marker: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The message content of an encrypted attachment (`file`: its `EncryptedFile`).

    `marker`, if any, goes under `fr.aplus` (how the bridge tags what it posts).
    """
    content: dict[str, Any] = {
        "msgtype": msgtype_for(mimetype),
        "body": filename,
        "filename": filename,
        "info": {"mimetype": mimetype, "size": size},
        "file": dict(file),
    }
    if marker:
        content["fr.aplus"] = dict(marker)
    return content
