import base64
import os

import pytest

from bot.store.crypto import (
    NONCE_SIZE,
    FieldCipher,
    InvalidKeyError,
    TamperedDataError,
    UnknownKeyError,
    generate_key,
    key_id_for,
)

AAD = b"demandes:dossier:A-2026-000001"


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher.from_secret(generate_key())


def test_round_trip_and_layout(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(b"Jeanne Dupont 2 84 05 75 123 456 78", AAD)
    assert cipher.decrypt(blob, AAD) == b"Jeanne Dupont 2 84 05 75 123 456 78"
    assert b"Dupont" not in blob
    key_id = cipher.current_key_id.encode()
    assert blob[0] == 1
    assert blob[1] == len(key_id)
    assert blob[2 : 2 + len(key_id)] == key_id
    # nonce + ciphertext (same length as plaintext) + 16-byte tag
    assert len(blob) == 2 + len(key_id) + NONCE_SIZE + 35 + 16


def test_nonce_is_random(cipher: FieldCipher) -> None:
    assert cipher.encrypt(b"same", AAD) != cipher.encrypt(b"same", AAD)


def test_empty_plaintext(cipher: FieldCipher) -> None:
    assert cipher.decrypt(cipher.encrypt(b"", AAD), AAD) == b""


def test_json_round_trip(cipher: FieldCipher) -> None:
    value = {"nom": "Dupont", "prénom": "Jeanne", "n": [1, 2], "x": None}
    assert cipher.decrypt_json(cipher.encrypt_json(value, AAD), AAD) == value


@pytest.mark.parametrize("position", [0, 1, 2, 20, -1])
def test_tampering_is_detected(cipher: FieldCipher, position: int) -> None:
    blob = bytearray(cipher.encrypt(b"secret", AAD))
    blob[position] ^= 0x01
    with pytest.raises((TamperedDataError, UnknownKeyError)):
        cipher.decrypt(bytes(blob), AAD)


def test_ciphertext_bit_flip_is_tampering(cipher: FieldCipher) -> None:
    blob = bytearray(cipher.encrypt(b"secret", AAD))
    blob[-20] ^= 0x80
    with pytest.raises(TamperedDataError, match="altérée"):
        cipher.decrypt(bytes(blob), AAD)


def test_truncated_and_garbage(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(b"secret", AAD)
    with pytest.raises(TamperedDataError):
        cipher.decrypt(blob[:20], AAD)
    with pytest.raises(TamperedDataError):
        cipher.decrypt(b"", AAD)
    with pytest.raises(TamperedDataError, match="format"):
        cipher.decrypt(b"\x02" + blob[1:], AAD)


def test_wrong_aad_is_refused(cipher: FieldCipher) -> None:
    blob = cipher.encrypt(b"secret", AAD)
    with pytest.raises(TamperedDataError):
        cipher.decrypt(blob, b"demandes:dossier:A-2026-000002")


def test_rotation_keeps_old_rows_readable() -> None:
    old_secret, new_secret = generate_key(), generate_key()
    old = FieldCipher.from_secret(old_secret)
    old_blob = old.encrypt(b"ancien", AAD)

    rotated = FieldCipher.from_secret(new_secret, previous=[old_secret])
    assert rotated.current_key_id != old.current_key_id
    assert rotated.decrypt(old_blob, AAD) == b"ancien"
    new_blob = rotated.encrypt(b"nouveau", AAD)
    assert rotated.key_id_of(new_blob) == rotated.current_key_id
    assert rotated.key_id_of(old_blob) == old.current_key_id

    # Without the retired key, the old row names a key we do not have.
    with pytest.raises(UnknownKeyError, match=old.current_key_id):
        FieldCipher.from_secret(new_secret).decrypt(old_blob, AAD)
    with pytest.raises(UnknownKeyError):
        old.decrypt(new_blob, AAD)


def test_explicit_key_ids() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    c1 = FieldCipher({"2025": k1}, "2025")
    c2 = FieldCipher({"2025": k1, "2026": k2}, "2026")
    assert c2.decrypt(c1.encrypt(b"x", AAD), AAD) == b"x"
    assert c2.key_id_of(c2.encrypt(b"x", AAD)) == "2026"


def test_same_secret_same_key_id() -> None:
    secret = generate_key()
    a, b = FieldCipher.from_secret(secret), FieldCipher.from_secret(secret)
    assert a.current_key_id == b.current_key_id == key_id_for(base64.urlsafe_b64decode(secret))
    assert b.decrypt(a.encrypt(b"x", AAD), AAD) == b"x"


def test_from_secret_accepts_standard_and_urlsafe_with_or_without_padding() -> None:
    raw = bytes(range(250, 256)) + os.urandom(26)  # forces '+', '/' or '-', '_'
    forms = [
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("=") + "\n",
    ]
    ids = {FieldCipher.from_secret(text).current_key_id for text in forms}
    assert ids == {key_id_for(raw)}


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("", "vide"),
        ("   ", "vide"),
        ("pas du base64 !", "base64"),
        (base64.b64encode(os.urandom(16)).decode(), "32 octets"),
        (base64.b64encode(os.urandom(33)).decode(), "must be 32 bytes"),
    ],
    # Fixed ids: random keys in them would differ between pytest-xdist workers.
    ids=["empty", "blank", "not-base64", "16-bytes", "33-bytes"],
)
def test_from_secret_rejects_bad_keys(secret: str, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message):
        FieldCipher.from_secret(secret)


def test_constructor_checks() -> None:
    with pytest.raises(InvalidKeyError, match="absente"):
        FieldCipher({"a": os.urandom(32)}, "b")
    with pytest.raises(InvalidKeyError, match="32"):
        FieldCipher({"a": os.urandom(16)}, "a")
    with pytest.raises(InvalidKeyError):
        FieldCipher({"": os.urandom(32)}, "")


def test_generated_keys_are_distinct_and_valid() -> None:
    keys = {generate_key() for _ in range(10)}
    assert len(keys) == 10
    for key in keys:
        FieldCipher.from_secret(key)
