"""The bot's cross-signing identity (master, self-signing and user-signing keys).

Element refuses room keys to devices that their owner has not cross-signed
(MSC4153, "exclude insecure devices") and matrix-nio has no cross-signing, so the
bot signs its own device here. The three private keys are 32-byte Ed25519 seeds
kept in the secret store: with them a new device of the bot only needs a
signature upload, which the homeserver never guards with interactive auth.

The first half of the module is pure (canonical JSON, signing, the exact request
bodies, the decision of what to do); the I/O sits in `ensure_cross_signing` and
`cross_signing_status` at the end.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets as _secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nio import AsyncClient

log = logging.getLogger(__name__)

SEED_SECRET_NAME = "matrix.cross_signing.seeds"  # noqa: S105 (a name, not a secret)
SEED_LENGTH = 32
_SEEDS_FORMAT_V1 = b"\x01"

JsonObject = dict[str, Any]
Action = Literal["created", "repaired", "unchanged"]


class CrossSigningError(Exception):
    """Cross-signing could not be set up; the message is meant for an operator."""


class CrossSigningConflict(CrossSigningError):
    """The homeserver holds a master key that is not ours: never replaced silently."""


# --- Pure part: encoding and signatures -------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """Matrix canonical JSON: sorted keys, no whitespace, raw UTF-8, integers only."""
    _reject_floats(value)
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError("canonical JSON has no floating-point numbers")
    if isinstance(value, Mapping):
        for item in value.values():
            _reject_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item)


def signing_payload(obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the object without `signatures` and `unsigned`."""
    return canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})


def b64_encode(data: bytes) -> str:
    """Unpadded standard base64, as Matrix uses for keys and signatures."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64_decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def key_id(public_key: str) -> str:
    """The ID of an Ed25519 key: `ed25519:` followed by its public key."""
    return f"ed25519:{public_key}"


def public_key_of(seed: bytes) -> str:
    """The unpadded base64 public key of an Ed25519 seed."""
    raw = _private_key(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return b64_encode(raw)


def _private_key(seed: bytes) -> Ed25519PrivateKey:
    if len(seed) != SEED_LENGTH:
        raise ValueError("an Ed25519 seed is 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def sign_json(obj: Mapping[str, Any], *, user_id: str, seed: bytes) -> JsonObject:
    """A copy of `obj` signed by `seed`, keeping existing signatures, without `unsigned`."""
    signature = b64_encode(_private_key(seed).sign(signing_payload(obj)))
    signed = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signatures = {u: dict(s) for u, s in obj.get("signatures", {}).items()}
    signatures.setdefault(user_id, {})[key_id(public_key_of(seed))] = signature
    signed["signatures"] = signatures
    return signed


def verify_signature(obj: Mapping[str, Any], *, user_id: str, public_key: str) -> bool:
    """Whether `obj` carries a valid signature by `public_key` in the name of `user_id`."""
    signature = obj.get("signatures", {}).get(user_id, {}).get(key_id(public_key))
    if not isinstance(signature, str):
        return False
    try:
        verifier = Ed25519PublicKey.from_public_bytes(b64_decode(public_key))
        verifier.verify(b64_decode(signature), signing_payload(obj))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- Pure part: the bot's keys and request bodies ---------------------------------------


@dataclass(frozen=True)
class CrossSigningSeeds:
    """The three private keys; never logged (hidden from repr)."""

    master: bytes = field(repr=False)
    self_signing: bytes = field(repr=False)
    user_signing: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for seed in (self.master, self.self_signing, self.user_signing):
            if len(seed) != SEED_LENGTH:
                raise ValueError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> CrossSigningSeeds:
        return cls(*(_secrets.token_bytes(SEED_LENGTH) for _ in range(3)))

    def to_bytes(self) -> bytes:
        return _SEEDS_FORMAT_V1 + self.master + self.self_signing + self.user_signing

    @classmethod
    def from_bytes(cls, data: bytes) -> CrossSigningSeeds:
        if len(data) != 1 + 3 * SEED_LENGTH or data[:1] != _SEEDS_FORMAT_V1:
            raise ValueError("stored cross-signing seeds have an unknown format")
        body = data[1:]
        return cls(body[:32], body[32:64], body[64:])

    @property
    def master_public(self) -> str:
        return public_key_of(self.master)

    @property
    def self_signing_public(self) -> str:
        return public_key_of(self.self_signing)

    @property
    def user_signing_public(self) -> str:
        return public_key_of(self.user_signing)


def _key_object(user_id: str, usage: str, public_key: str) -> JsonObject:
    return {"user_id": user_id, "usage": [usage], "keys": {key_id(public_key): public_key}}


def device_signing_upload_body(user_id: str, seeds: CrossSigningSeeds) -> JsonObject:
    """Body of `POST /keys/device_signing/upload` (without `auth`)."""
    master = _key_object(user_id, "master", seeds.master_public)
    self_signing = _key_object(user_id, "self_signing", seeds.self_signing_public)
    user_signing = _key_object(user_id, "user_signing", seeds.user_signing_public)
    return {
        "master_key": master,
        "self_signing_key": sign_json(self_signing, user_id=user_id, seed=seeds.master),
        "user_signing_key": sign_json(user_signing, user_id=user_id, seed=seeds.master),
    }


def signature_upload_body(
    user_id: str, device_keys: Mapping[str, Any], seeds: CrossSigningSeeds
) -> JsonObject:
    """Body of `POST /keys/signatures/upload`: our device signed by our self-signing key."""
    device_id = device_keys["device_id"]
    signed = sign_json(device_keys, user_id=user_id, seed=seeds.self_signing)
    return {user_id: {device_id: signed}}


def password_auth(user_id: str, password: str, session: str | None) -> JsonObject:
    auth: JsonObject = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    if session is not None:
        auth["session"] = session
    return auth


# --- Pure part: reading the server's view and deciding ----------------------------------


def _single_key(key_object: Any) -> str | None:
    if not isinstance(key_object, Mapping):
        return None
    keys = key_object.get("keys")
    if not isinstance(keys, Mapping) or len(keys) != 1:
        return None
    (value,) = keys.values()
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ServerIdentity:
    """What `/keys/query` says about the bot's own user and device."""

    master_key: str | None
    self_signing_key: str | None
    user_signing_key: str | None
    device_keys: JsonObject | None

    @classmethod
    def from_query(
        cls, response: Mapping[str, Any], user_id: str, device_id: str
    ) -> ServerIdentity:
        device = response.get("device_keys", {}).get(user_id, {}).get(device_id)
        return cls(
            master_key=_single_key(response.get("master_keys", {}).get(user_id)),
            self_signing_key=_single_key(response.get("self_signing_keys", {}).get(user_id)),
            user_signing_key=_single_key(response.get("user_signing_keys", {}).get(user_id)),
            device_keys=dict(device) if isinstance(device, Mapping) else None,
        )

    def device_signed(self, user_id: str) -> bool:
        """Whether the device carries a valid signature by the published self-signing key."""
        if self.device_keys is None or self.self_signing_key is None:
            return False
        return verify_signature(self.device_keys, user_id=user_id, public_key=self.self_signing_key)


@dataclass(frozen=True)
class Plan:
    upload_keys: bool
    sign_device: bool


def plan_repair(ours: CrossSigningSeeds, server: ServerIdentity, user_id: str) -> Plan:
    """What must be uploaded so the server shows our keys and our signed device.

    Raises `CrossSigningConflict` when the server already holds other keys: replacing
    them would cut off everyone who trusts the current identity, so a human decides.
    """
    published = (server.master_key, server.self_signing_key, server.user_signing_key)
    expected = (ours.master_public, ours.self_signing_public, ours.user_signing_public)
    if any(p is not None and p != e for p, e in zip(published, expected, strict=True)):
        raise CrossSigningConflict(
            f"Le compte {user_id} a déjà une identité de signature croisée sur le serveur "
            f"(clé maîtresse {server.master_key}) qui ne correspond pas aux clés enregistrées "
            f"par le robot (clé maîtresse {ours.master_public}). Le robot ne la remplace pas "
            "de lui-même : vérifiez qui l'a créée, puis réinitialisez-la volontairement "
            "ou restaurez les clés du robot."
        )
    upload_keys = any(p is None for p in published)
    # Freshly uploaded keys cannot have signed the device yet.
    sign_device = upload_keys or not server.device_signed(user_id)
    return Plan(upload_keys=upload_keys, sign_device=sign_device)


# --- I/O: talking to the homeserver ------------------------------------------------------


class SecretStore(Protocol):
    """Where the seeds live; the database transaction encrypts them at rest."""

    async def get_secret(self, key: str) -> bytes | None: ...

    async def set_secret(self, key: str, value: bytes) -> None: ...


@dataclass(frozen=True)
class CrossSigningStatus:
    master_key: str
    self_signing_key: str
    device_id: str
    device_signed: bool
    action: Action


@dataclass(frozen=True)
class CrossSigningReport:
    """The server's view, for `aplus crypto status`."""

    user_id: str
    device_id: str
    master_key: str | None
    self_signing_key: str | None
    user_signing_key: str | None
    device_signed: bool
    matches_stored_keys: bool | None  # None when no secret store was given


class _Homeserver:
    """Three authenticated JSON calls; nio offers none of them."""

    def __init__(self, client: AsyncClient) -> None:
        self._base = client.homeserver.rstrip("/") + "/_matrix/client/v3"
        self._headers = {"Authorization": f"Bearer {client.access_token}"}
        self._timeout = aiohttp.ClientTimeout(total=30)

    async def post(self, path: str, body: JsonObject) -> tuple[int, JsonObject]:
        async with (
            aiohttp.ClientSession(timeout=self._timeout, headers=self._headers) as session,
            session.post(self._base + path, json=body) as response,
        ):
            try:
                payload = await response.json(content_type=None)
            except ValueError:
                payload = None
            return response.status, payload if isinstance(payload, dict) else {}

    async def query_own_keys(self, user_id: str, device_id: str) -> ServerIdentity:
        status, payload = await self.post("/keys/query", {"device_keys": {user_id: []}})
        if status != 200:
            raise CrossSigningError(_http_error("la lecture des clés du robot", status, payload))
        return ServerIdentity.from_query(payload, user_id, device_id)


def _http_error(what: str, status: int, payload: Mapping[str, Any]) -> str:
    code = payload.get("errcode", "?")
    return f"Échec de {what} sur le serveur Matrix (HTTP {status}, {code})."


def _identity(client: AsyncClient) -> tuple[str, str, str]:
    if not client.access_token or not client.user_id or not client.device_id:
        raise CrossSigningError("Le robot doit être connecté avant la signature croisée.")
    if client.olm is None:
        raise CrossSigningError("Le chiffrement de bout en bout du robot n'est pas chargé.")
    return client.user_id, client.device_id, client.olm.account.identity_keys["ed25519"]


async def _upload_keys(
    server: _Homeserver, user_id: str, seeds: CrossSigningSeeds, password: str | None
) -> None:
    body = device_signing_upload_body(user_id, seeds)
    status, payload = await server.post("/keys/device_signing/upload", body)
    if status == 401 and "flows" in payload:
        flows = [flow.get("stages", []) for flow in payload.get("flows", [])]
        if password is None or ["m.login.password"] not in flows:
            raise CrossSigningError(
                "Le serveur Matrix exige une authentification pour publier les clés de "
                "signature croisée du robot, et le robot ne peut pas la fournir "
                "(mot de passe absent ou méthode non prise en charge)."
            )
        body["auth"] = password_auth(user_id, password, payload.get("session"))
        status, payload = await server.post("/keys/device_signing/upload", body)
    if status != 200:
        raise CrossSigningError(
            _http_error("la publication des clés de signature croisée", status, payload)
        )


async def _sign_device(
    server: _Homeserver,
    user_id: str,
    device_keys: JsonObject,
    seeds: CrossSigningSeeds,
) -> None:
    body = signature_upload_body(user_id, device_keys, seeds)
    status, payload = await server.post("/keys/signatures/upload", body)
    # 200 is not success: rejected signatures are listed in `failures`.
    failures = payload.get("failures") or {}
    if status != 200 or failures:
        reasons = sorted(
            str(failure.get("errcode", "?"))
            for per_user in failures.values()
            for failure in per_user.values()
        )
        raise CrossSigningError(
            _http_error("la signature de l'appareil du robot", status, payload)
            + (f" Refus : {', '.join(reasons)}." if reasons else "")
        )


async def _own_device(
    client: AsyncClient, server: _Homeserver, user_id: str, device_id: str
) -> ServerIdentity:
    identity = await server.query_own_keys(user_id, device_id)
    if identity.device_keys is None and client.should_upload_keys:
        await client.keys_upload()
        identity = await server.query_own_keys(user_id, device_id)
    return identity


def _check_device_is_ours(identity: ServerIdentity, device_id: str, ed25519: str) -> JsonObject:
    device = identity.device_keys
    if device is None:
        raise CrossSigningError(
            f"L'appareil {device_id} du robot n'a pas publié ses clés sur le serveur."
        )
    # Never sign a key we do not hold: the server could hand us someone else's.
    if device.get("keys", {}).get(f"ed25519:{device_id}") != ed25519:
        raise CrossSigningError(
            f"Les clés publiées pour l'appareil {device_id} ne sont pas celles du robot."
        )
    return device


async def ensure_cross_signing(
    client: AsyncClient,
    secrets: SecretStore,
    *,
    password: str | None,
    secret_name: str = SEED_SECRET_NAME,
) -> CrossSigningStatus:
    """Give the bot a cross-signing identity and make sure its device is signed.

    `client` is a logged-in `nio.AsyncClient` with its E2EE store loaded. Idempotent:
    meant to run at every start.
    """
    user_id, device_id, ed25519 = _identity(client)
    server = _Homeserver(client)
    identity = await _own_device(client, server, user_id, device_id)
    device = _check_device_is_ours(identity, device_id, ed25519)

    stored = await secrets.get_secret(secret_name)
    if stored is None:
        if identity.master_key is not None:
            raise CrossSigningConflict(
                f"Le compte {user_id} a déjà une clé maîtresse de signature croisée sur le "
                f"serveur ({identity.master_key}) mais le robot n'a aucune clé enregistrée. "
                "Le robot ne la remplace pas de lui-même : restaurez ses clés, ou "
                "réinitialisez volontairement l'identité du compte."
            )
        seeds = CrossSigningSeeds.generate()
        # Stored before upload: a crash in between must not leave keys we cannot use.
        await secrets.set_secret(secret_name, seeds.to_bytes())
        action: Action = "created"
    else:
        seeds = CrossSigningSeeds.from_bytes(stored)
        action = "unchanged"

    plan = plan_repair(seeds, identity, user_id)
    if plan.upload_keys:
        await _upload_keys(server, user_id, seeds, password)
    if plan.sign_device:
        await _sign_device(server, user_id, device, seeds)
    if action == "unchanged" and (plan.upload_keys or plan.sign_device):
        action = "repaired"

    log.info(
        "cross-signing %s: master %s, device %s signed",
        action,
        seeds.master_public,
        device_id,
    )
    return CrossSigningStatus(
        master_key=seeds.master_public,
        self_signing_key=seeds.self_signing_public,
        device_id=device_id,
        device_signed=True,
        action=action,
    )


async def cross_signing_status(
    client: AsyncClient,
    secrets: SecretStore | None = None,
    *,
    secret_name: str = SEED_SECRET_NAME,
) -> CrossSigningReport:
    """Read-only: what the server shows, and whether it matches the stored keys."""
    user_id, device_id, _ = _identity(client)
    identity = await _Homeserver(client).query_own_keys(user_id, device_id)
    matches: bool | None = None
    if secrets is not None:
        stored = await secrets.get_secret(secret_name)
        matches = stored is not None and (
            identity.master_key == CrossSigningSeeds.from_bytes(stored).master_public
        )
    return CrossSigningReport(
        user_id=user_id,
        device_id=device_id,
        master_key=identity.master_key,
        self_signing_key=identity.self_signing_key,
        user_signing_key=identity.user_signing_key,
        device_signed=identity.device_signed(user_id),
        matches_stored_keys=matches,
    )
