"""Encrypted Matrix attachments (``EncryptedFile``) for the email bridge.

Downloads go through the authenticated media API (``/_matrix/client/v1/media``,
the only one Synapse serves new media on), uploads through
``/_matrix/media/v3/upload``. Files are encrypted before upload and checked
against their SHA-256 after download (nio's attachment helpers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from bot.matrix.errors import HomeserverUnavailable, MatrixError
from bot.matrix.gateway import MatrixGateway


class MatrixMedia:
    def __init__(self, gateway: MatrixGateway, *, timeout: float = 60.0) -> None:
        self.gateway = gateway
        self._session: aiohttp.ClientSession | None = None
        self._timeout = timeout

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.gateway.client.access_token}"}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def download(self, file: Mapping[str, Any], *, max_bytes: int) -> bytes:
        """The plaintext of an ``EncryptedFile``; ``ValueError`` if malformed or too big."""
        url = str(file.get("url", ""))
        key = (file.get("key") or {}).get("k")
        digest = (file.get("hashes") or {}).get("sha256")
        iv = file.get("iv")
        if not url.startswith("mxc://") or not (key and digest and iv):
            raise ValueError("malformed encrypted file")
        server, _, media_id = url.removeprefix("mxc://").partition("/")
        path = (
            f"/_matrix/client/v1/media/download/{quote(server, safe='')}/{quote(media_id, safe='')}"
        )
        try:
            async with self._http().get(
                self.gateway.homeserver + path, headers=self._headers()
            ) as resp:
                if resp.status >= 400:
                    raise MatrixError(resp.status, None, f"media download: {resp.reason}")
                data = await resp.content.read(max_bytes + 1024)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise HomeserverUnavailable(f"media download: {exc}") from exc
        if len(data) > max_bytes + 1024:
            raise ValueError("attachment too big")
        return bytes(decrypt_attachment(data, str(key), str(digest), str(iv)))

    async def upload(self, data: bytes, *, filename: str, content_type: str) -> dict[str, Any]:
        """Encrypt and upload; returns the ``file`` object of an ``m.file`` content."""
        ciphertext, keys = encrypt_attachment(data)
        try:
            async with self._http().post(
                self.gateway.homeserver + "/_matrix/media/v3/upload",
                params={"filename": filename},
                data=ciphertext,
                headers={**self._headers(), "Content-Type": "application/octet-stream"},
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise MatrixError(resp.status, (body or {}).get("errcode"), "media upload")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise HomeserverUnavailable(f"media upload: {exc}") from exc
        return {"url": str(body["content_uri"]), **keys}


def file_message(
    file: Mapping[str, Any], *, filename: str, content_type: str, size: int, **marker: Any
) -> dict[str, Any]:
    """An encrypted ``m.file`` (or ``m.image``) message content."""
    msgtype = "m.image" if content_type.startswith("image/") else "m.file"
    content: dict[str, Any] = {
        "msgtype": msgtype,
        "body": filename,
        "filename": filename,
        "info": {"mimetype": content_type, "size": size},
        "file": dict(file),
    }
    if marker:
        content["fr.aplus"] = dict(marker)
    return content
