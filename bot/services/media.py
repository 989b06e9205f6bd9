"""Encrypted attachments in the admin room: a CSV sent by an operator, a chart or an
export sent by the bot.

Files are encrypted before upload (``EncryptedFile``: the homeserver only ever
holds ciphertext) and checked against their SHA-256 after download, with nio's
attachment helpers. Downloads use the authenticated media API, the only one
Synapse serves new media on.

TODO(issue 3): use ``MatrixGateway.fetch_attachment`` once it lands, and share
one helper with ``bridge.media`` (the email bridge has the same two functions).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from nio import DownloadError, MemoryDownloadResponse, UploadResponse
from nio.crypto.attachments import decrypt_attachment

from bot.matrix.errors import MatrixError
from bot.matrix.gateway import MatrixGateway


class AttachmentError(ValueError):
    """The attachment is malformed, too big or could not be decrypted (French message)."""


def encrypted_file(content: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``file`` object of an encrypted m.file/m.image content, if there is one."""
    file = content.get("file")
    return file if isinstance(file, Mapping) else None


async def fetch_attachment(
    gateway: MatrixGateway, content: Mapping[str, Any], *, max_bytes: int
) -> bytes:
    """The plaintext of an encrypted attachment of a message content."""
    file = encrypted_file(content)
    if file is None:
        raise AttachmentError("le fichier n'est pas chiffré : envoyez-le dans le salon chiffré")
    url = str(file.get("url", ""))
    key = (file.get("key") or {}).get("k")
    digest = (file.get("hashes") or {}).get("sha256")
    iv = file.get("iv")
    if not url.startswith("mxc://") or not (key and digest and iv):
        raise AttachmentError("pièce jointe mal formée")
    size = (content.get("info") or {}).get("size")
    if isinstance(size, int) and size > max_bytes:
        raise AttachmentError(f"fichier trop gros ({size} octets, au plus {max_bytes})")
    resp = await gateway.client.download(mxc=url)
    if isinstance(resp, DownloadError) or not isinstance(resp, MemoryDownloadResponse):
        raise MatrixError(None, getattr(resp, "status_code", None), f"media download: {resp}")
    if len(resp.body) > max_bytes + 1024:
        raise AttachmentError(f"fichier trop gros (au plus {max_bytes} octets)")
    try:
        return bytes(decrypt_attachment(resp.body, str(key), str(digest), str(iv)))
    except Exception as exc:  # nio raises EncryptionError or ValueError on a bad file
        raise AttachmentError("le fichier n'a pas pu être déchiffré") from exc


async def upload_encrypted(
    gateway: MatrixGateway, data: bytes, *, filename: str, content_type: str
) -> dict[str, Any]:
    """Encrypt and upload; returns the message content (m.image or m.file) to send."""
    resp, keys = await gateway.client.upload(
        io.BytesIO(data),
        content_type="application/octet-stream",
        filename=filename,
        encrypt=True,
        filesize=len(data),
    )
    if not isinstance(resp, UploadResponse) or keys is None:
        raise MatrixError(None, getattr(resp, "status_code", None), f"media upload: {resp}")
    msgtype = "m.image" if content_type.startswith("image/") else "m.file"
    return {
        "msgtype": msgtype,
        "body": filename,
        "filename": filename,
        "info": {"mimetype": content_type, "size": len(data)},
        "file": {"url": resp.content_uri, **keys},
    }
