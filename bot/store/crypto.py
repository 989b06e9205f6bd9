"""Field-level encryption at rest: AES-256-GCM with key IDs for rotation.

Blob layout: ``version (1 byte) | key-id length (1 byte) | key-id (ASCII) |
nonce (12 bytes) | ciphertext + GCM tag``. The key ID travels with the blob so
that old rows stay readable after the current key changes. The caller passes an
AAD naming the row and column (``b"demandes:dossier:A-2026-000001"``): GCM then
refuses a ciphertext copied into another row, which plain encryption would not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
_TAG_SIZE = 16


class FieldCipherError(ValueError):
    """A blob cannot be decrypted, or a key is unusable."""


class UnknownKeyError(FieldCipherError):
    pass


class TamperedDataError(FieldCipherError):
    pass


class InvalidKeyError(FieldCipherError):
    pass


def generate_key() -> str:
    """A fresh secret, in the form `FieldCipher.from_secret` accepts."""
    return base64.urlsafe_b64encode(os.urandom(KEY_SIZE)).decode("ascii")


def decode_secret(b64_text: str) -> bytes:
    """Standard or URL-safe base64 of exactly 32 bytes, padding optional."""
    text = "".join(b64_text.split())
    if not text:
        raise InvalidKeyError(
            "La clé de chiffrement est vide (attendu : 32 octets en base64, "
            "générés par `aplus generate-key`). / The encryption key is empty."
        )
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyError(
            "La clé de chiffrement n'est pas du base64 valide. "
            "/ The encryption key is not valid base64."
        ) from None
    if len(raw) != KEY_SIZE:
        raise InvalidKeyError(
            f"La clé de chiffrement doit faire {KEY_SIZE} octets, elle en fait {len(raw)}. "
            f"/ The encryption key must be {KEY_SIZE} bytes, got {len(raw)}."
        )
    return raw


def key_id_for(key: bytes) -> str:
    """A short, stable ID derived from the key, so operators never have to name keys."""
    return hashlib.sha256(b"aplus-field-key-id:" + key).hexdigest()[:8]


class FieldCipher:
    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise InvalidKeyError(
                f"La clé courante « {current} » est absente du trousseau. "
                f"/ Current key {current!r} is not among the keys."
            )
        for key_id, key in keys.items():
            if not key_id or len(key_id.encode("ascii", "replace")) > 255 or not key_id.isascii():
                raise InvalidKeyError(
                    f"Identifiant de clé invalide : {key_id!r}. / Invalid key ID {key_id!r}."
                )
            if len(key) != KEY_SIZE:
                raise InvalidKeyError(
                    f"La clé « {key_id} » doit faire {KEY_SIZE} octets. "
                    f"/ Key {key_id!r} must be {KEY_SIZE} bytes."
                )
        self._aead = {key_id: AESGCM(bytes(key)) for key_id, key in keys.items()}
        self._current = current

    @classmethod
    def from_secret(cls, b64_text: str, *, previous: Iterable[str] = ()) -> FieldCipher:
        """The current secret, plus retired ones still needed to read old rows."""
        current = decode_secret(b64_text)
        keys = {key_id_for(raw): raw for raw in map(decode_secret, previous)}
        keys[key_id_for(current)] = current
        return cls(keys, key_id_for(current))

    @property
    def current_key_id(self) -> str:
        return self._current

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        key_id = self._current.encode("ascii")
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead[self._current].encrypt(nonce, plaintext, aad)
        return bytes([VERSION, len(key_id)]) + key_id + nonce + sealed

    def key_id_of(self, blob: bytes) -> str:
        """Which key sealed a blob: lets a rotation job find rows to re-encrypt."""
        return self._parse(blob)[0]

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        key_id, nonce, sealed = self._parse(blob)
        aead = self._aead.get(key_id)
        if aead is None:
            raise UnknownKeyError(
                f"Donnée chiffrée avec une clé inconnue « {key_id} » : ajoutez l'ancienne clé. "
                f"/ Data sealed with unknown key {key_id!r}."
            )
        try:
            return aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise TamperedDataError(
                "Donnée chiffrée altérée ou déplacée depuis une autre ligne. "
                "/ Encrypted data was tampered with or moved from another row."
            ) from None

    def encrypt_json(self, value: Any, aad: bytes) -> bytes:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        return self.encrypt(text.encode("utf-8"), aad)

    def decrypt_json(self, blob: bytes, aad: bytes) -> Any:
        return json.loads(self.decrypt(blob, aad).decode("utf-8"))

    @staticmethod
    def _parse(blob: bytes) -> tuple[str, bytes, bytes]:
        blob = bytes(blob)
        if len(blob) < 2 or blob[0] != VERSION:
            raise TamperedDataError(
                "Format de donnée chiffrée inconnu. / Unknown encrypted data format."
            )
        id_len = blob[1]
        start = 2 + id_len
        if len(blob) < start + NONCE_SIZE + _TAG_SIZE:
            raise TamperedDataError("Donnée chiffrée tronquée. / Encrypted data is truncated.")
        try:
            key_id = blob[2:start].decode("ascii")
        except UnicodeDecodeError:
            raise TamperedDataError("Identifiant de clé illisible. / Unreadable key ID.") from None
        return key_id, blob[start : start + NONCE_SIZE], blob[start + NONCE_SIZE :]
