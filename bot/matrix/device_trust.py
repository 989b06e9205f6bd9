"""Which devices their owner cross-signed, read from `/keys/query` and checked here.

nio reads `/keys/query` but keeps nothing of the cross-signing keys in it, and
does not trust devices through cross-signing. So the bot asks the homeserver
itself, verifies the chain (device ← self-signing key ← master key) with the
same signature code as its own identity, and keeps the answer per user until the
sync reports that the user's devices changed (``device_lists.changed``), a
membership change, or a time-to-live runs out (a safety net, not the mechanism).

The master key itself is pinned on first sight (`IdentityCheck`, trust on first
use, kept in the database): a later answer with another master key for the same
user (whoever holds their password, or a homeserver admin, can reset it and sign a
device of their own) makes every device of that user untrusted, so they get
`m.room_key.withheld` (`m.unverified`), until an operator accepts the new identity.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bot.domain.key_sharing import Device
from bot.matrix.cross_signing import b64_decode, signing_payload, verify_signature

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 600.0

QueryFn = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]
ResponseHook = Callable[[dict[str, Any]], Awaitable[None]]


class IdentityCheck(Protocol):
    async def check(self, user_id: str, master_key: str) -> bool:
        """True if `master_key` is the user's pinned identity (pinned now if first seen)."""
        ...


def _cross_signing_key(obj: Any, user_id: str, usage: str) -> str | None:
    """The public key of a cross-signing key object, if it is well-formed for `usage`."""
    if not isinstance(obj, Mapping) or obj.get("user_id") != user_id:
        return None
    if usage not in (obj.get("usage") or []):
        return None
    keys = obj.get("keys")
    if not isinstance(keys, Mapping) or len(keys) != 1:
        return None
    ((kid, value),) = keys.items()
    if not isinstance(value, str) or kid != f"ed25519:{value}":
        return None
    return value


def master_key(response: Mapping[str, Any], user_id: str) -> str | None:
    """The user's master key in a `/keys/query` answer, if well-formed."""
    return _cross_signing_key(response.get("master_keys", {}).get(user_id), user_id, "master")


def self_signing_key(response: Mapping[str, Any], user_id: str) -> str | None:
    """The user's self-signing key, only if their master key signed it."""
    master = _cross_signing_key(response.get("master_keys", {}).get(user_id), user_id, "master")
    ssk_obj = response.get("self_signing_keys", {}).get(user_id)
    ssk = _cross_signing_key(ssk_obj, user_id, "self_signing")
    if master is None or ssk is None:
        return None
    if not verify_signature(ssk_obj, user_id=user_id, public_key=master):
        return None
    return ssk


def _self_signed(device: Mapping[str, Any], user_id: str, device_id: str, ed25519: str) -> bool:
    """A device key object must carry its own signature (key ID `ed25519:<device ID>`)."""
    signature = device.get("signatures", {}).get(user_id, {}).get(f"ed25519:{device_id}")
    if not isinstance(signature, str):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(b64_decode(ed25519)).verify(
            b64_decode(signature), signing_payload(device)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def devices_from_query(response: Mapping[str, Any], user_id: str) -> list[Device]:
    """The user's well-formed devices in a `/keys/query` answer, each with its trust.

    A device whose object is malformed or not signed by its own key is left out
    entirely (nio does the same): it cannot receive an Olm message anyway.
    """
    ssk = self_signing_key(response, user_id)
    found: list[Device] = []
    per_user = response.get("device_keys", {}).get(user_id) or {}
    if not isinstance(per_user, Mapping):
        return found
    for device_id, obj in sorted(per_user.items()):
        if not isinstance(obj, Mapping):
            continue
        if obj.get("user_id") != user_id or obj.get("device_id") != device_id:
            continue
        keys = obj.get("keys") or {}
        ed25519 = keys.get(f"ed25519:{device_id}")
        curve25519 = keys.get(f"curve25519:{device_id}")
        if not isinstance(ed25519, str) or not isinstance(curve25519, str):
            continue
        try:
            if not _self_signed(obj, user_id, device_id, ed25519):
                continue
        except (TypeError, ValueError):
            continue
        cross_signed = ssk is not None and verify_signature(obj, user_id=user_id, public_key=ssk)
        found.append(Device(user_id, device_id, ed25519, curve25519, cross_signed))
    return found


class DeviceTrust:
    """Per-user cache of published devices and their cross-signing, refreshed on change."""

    def __init__(
        self,
        query: QueryFn,
        *,
        on_response: ResponseHook | None = None,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        pins: IdentityCheck | None = None,
    ) -> None:
        self._query = query
        self._on_response = on_response
        self.pins = pins
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, list[Device]]] = {}
        # Bumped by every invalidation: an answer to a query sent before a change is
        # returned to its caller but not cached as if it were fresh.
        self._generation: dict[str, int] = {}
        self._all_generation = 0
        self.queries = 0  # how many `/keys/query` calls were made (for tests and metrics)

    def invalidate(self, users: Iterable[str]) -> None:
        for user in users:
            self._cache.pop(user, None)
            self._generation[user] = self._generation.get(user, 0) + 1

    def invalidate_all(self) -> None:
        self._cache.clear()
        self._all_generation += 1

    def _version(self, user: str) -> tuple[int, int]:
        return (self._all_generation, self._generation.get(user, 0))

    def cached(self, user_id: str) -> list[Device] | None:
        entry = self._cache.get(user_id)
        if entry is None or self._monotonic() - entry[0] > self._ttl:
            return None
        return list(entry[1])

    async def devices(self, users: Collection[str]) -> dict[str, list[Device]]:
        """Devices of each user, from the cache or one `/keys/query` for the others."""
        out: dict[str, list[Device]] = {}
        missing: list[str] = []
        for user in sorted(set(users)):
            cached = self.cached(user)
            if cached is None:
                missing.append(user)
            else:
                out[user] = cached
        if not missing:
            return out
        self.queries += 1
        versions = {user: self._version(user) for user in missing}
        response = await self._query({"device_keys": {u: [] for u in missing}, "timeout": 10000})
        if self._on_response is not None:
            await self._on_response(response)
        failures = response.get("failures") or {}
        now = self._monotonic()
        for user in missing:
            devices = devices_from_query(response, user)
            master = master_key(response, user)
            pins = self.pins
            if pins and master and devices and not await pins.check(user, master):
                # Not the identity we know: no device of theirs counts as signed.
                devices = [dataclasses.replace(d, cross_signed=False) for d in devices]
            out[user] = devices
            server = user.split(":", 1)[-1]
            # A server that did not answer: no devices this time, and nothing cached.
            if server not in failures and self._version(user) == versions[user]:
                self._cache[user] = (now, devices)
        return out
