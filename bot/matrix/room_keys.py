"""Room keys: sharing ours with the devices the rules allow, asking for the ones we miss.

Why not nio's `share_group_session`: it shares with every device nio knows of the
users given, and nio trusts no device through cross-signing. Here the devices come
from `DeviceTrust` (our own check of the cross-signing chain) and the decision from
`bot.domain.key_sharing`; nio only provides the Olm sessions and encryption.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from nio import AsyncClient, MegolmEvent
from nio.crypto import OlmDevice
from nio.crypto.key_request import OutgoingKeyRequest
from nio.crypto.sessions import OutboundGroupSession

from bot.domain.key_sharing import (
    Device,
    DeviceRef,
    KeySharePlan,
    WithheldCode,
    Withhold,
    plan_key_sharing,
    withheld_content,
)
from bot.matrix.device_trust import DeviceTrust

log = logging.getLogger(__name__)

MEGOLM = "m.megolm.v1.aes-sha2"
TO_DEVICE_CHUNK = 100

RequestFn = Callable[..., Awaitable[dict[str, Any]]]
ClaimFn = Callable[[dict[str, list[str]]], Awaitable[None]]


def _txn() -> str:
    return uuid.uuid4().hex


@dataclass
class _Told:
    session_id: str
    devices: set[DeviceRef] = field(default_factory=set)


@dataclass(frozen=True)
class ShareResult:
    session_id: str
    plan: KeySharePlan
    shared: tuple[DeviceRef, ...]
    withheld: tuple[Withhold, ...]


class RoomKeySharer:
    def __init__(
        self,
        client: AsyncClient,
        request: RequestFn,
        claim: ClaimFn,
        trust: DeviceTrust,
        *,
        require_cross_signed: bool,
    ) -> None:
        self.client = client
        self.request = request
        self.claim = claim
        self.trust = trust
        self.require_cross_signed = require_cross_signed
        self._told: dict[str, _Told] = {}
        self.last: dict[str, ShareResult] = {}  # per room, for tests and diagnostics

    @property
    def _olm(self) -> Any:
        olm = self.client.olm
        assert olm is not None
        return olm

    def _current(self, room_id: str) -> OutboundGroupSession | None:
        session = self._olm.outbound_group_sessions.get(room_id)
        if session is None or session.expired or not session.shared:
            return None
        return session

    async def share(
        self, room_id: str, recipients: Collection[str], present: Collection[str]
    ) -> ShareResult | None:
        """Make sure every allowed device holds the current session; None if nothing changed."""
        olm = self._olm
        users = sorted(set(recipients) & set(present) - {self.client.user_id})
        devices = await self.trust.devices(users)
        current = self._current(room_id)
        told = self._told.get(room_id)
        plan = plan_key_sharing(
            authorised=recipients,
            present=present,
            devices=devices,
            require_cross_signed=self.require_cross_signed,
            own=(str(self.client.user_id), str(self.client.device_id)),
            shared_with=set(current.users_shared_with) if current else set(),
            withheld_from=told.devices
            if current and told and told.session_id == current.id
            else set(),
        )
        if current is not None and plan.nothing_to_do:
            return None
        fresh = current is None or plan.rotate
        if fresh:
            olm.create_outbound_group_session(room_id)
            told = None
        session = olm.outbound_group_sessions[room_id]
        if told is None or told.session_id != session.id:
            told = self._told[room_id] = _Told(session.id)

        shared, no_olm = await self._send_keys(room_id, session, plan.share)
        withheld = [*plan.withhold, *(Withhold(u, d, WithheldCode.NO_OLM) for u, d in no_olm)]
        await self._send_withheld(room_id, session.id, withheld)
        session.users_shared_with.update(shared)
        told.devices.update(w.ref for w in withheld)
        session.shared = True

        result = ShareResult(session.id, plan, tuple(shared), tuple(withheld))
        self.last[room_id] = result
        # Counts and codes only: who is who stays out of the logs.
        log.info(
            "room %s: %s session %s shared with %d device(s), withheld from %d %s, "
            "%d unauthorised member(s) sent nothing",
            room_id,
            "new" if fresh else "current",
            session.id[:8],
            len(shared),
            len(withheld),
            sorted({w.code.value for w in withheld}),
            len(plan.ignored_users),
        )
        return result

    def _nio_device(self, device: Device) -> OlmDevice | None:
        """nio's record of the device, only if it holds the very keys we checked."""
        try:
            known: OlmDevice = self._olm.device_store[device.user_id][device.device_id]
        except KeyError:
            return None
        if known.ed25519 != device.ed25519 or known.curve25519 != device.curve25519:
            return None
        return known

    async def _send_keys(
        self, room_id: str, session: OutboundGroupSession, targets: tuple[Device, ...]
    ) -> tuple[list[DeviceRef], list[DeviceRef]]:
        olm = self._olm
        resolved: list[OlmDevice] = []
        unusable: list[DeviceRef] = []
        for device in targets:
            known = self._nio_device(device)
            if known is None:
                unusable.append(device.ref)
            else:
                resolved.append(known)
        missing: dict[str, list[str]] = {}
        for known in resolved:
            if not olm.session_store.get(known.curve25519):
                missing.setdefault(known.user_id, []).append(known.id)
        if missing:
            await self.claim(missing)
        key_content = {
            "algorithm": MEGOLM,
            "room_id": room_id,
            "session_id": session.id,
            "session_key": session.session_key,
        }
        messages: list[tuple[OlmDevice, dict[str, Any]]] = []
        for known in resolved:
            olm_session = olm.session_store.get(known.curve25519)
            if olm_session is None:
                unusable.append((known.user_id, known.id))
                continue
            payload = olm._olm_encrypt(olm_session, known, "m.room_key", key_content)
            messages.append((known, payload))
        shared: list[DeviceRef] = []
        for start in range(0, len(messages), TO_DEVICE_CHUNK):
            chunk = messages[start : start + TO_DEVICE_CHUNK]
            body: dict[str, dict[str, Any]] = {}
            for known, payload in chunk:
                body.setdefault(known.user_id, {})[known.id] = payload
            await self._to_device("m.room.encrypted", body)
            shared.extend((known.user_id, known.id) for known, _ in chunk)
        return shared, unusable

    async def _send_withheld(self, room_id: str, session_id: str, withheld: list[Withhold]) -> None:
        if not withheld:
            return
        sender_key = self._olm.account.identity_keys["curve25519"]
        body: dict[str, dict[str, Any]] = {}
        for w in withheld:
            body.setdefault(w.user_id, {})[w.device_id] = withheld_content(
                w.code, room_id=room_id, session_id=session_id, sender_key=sender_key
            )
        await self._to_device("m.room_key.withheld", body)

    async def _to_device(self, event_type: str, messages: Mapping[str, Any]) -> None:
        path = f"/_matrix/client/v3/sendToDevice/{quote(event_type, safe='')}/{_txn()}"
        await self.request("PUT", path, {"messages": messages})

    # ------------------------------------------------------------ missing keys

    async def request_key(self, event: MegolmEvent, room_id: str) -> bool:
        """Ask the sender's devices for a session we miss (nio only asks our own devices).

        Recorded in nio's `outgoing_key_requests`, which is what makes nio consider a
        forwarded key for that session at all. False if already requested.
        """
        olm = self._olm
        if not event.session_id or event.session_id in olm.outgoing_key_requests:
            return False
        event.room_id = room_id
        message = event.as_key_request(
            event.sender, str(self.client.device_id), event.session_id, event.device_id
        )
        await self._to_device(message.type, message.as_dict()["messages"])
        request = OutgoingKeyRequest(event.session_id, event.session_id, room_id, MEGOLM)
        olm.outgoing_key_requests[event.session_id] = request
        olm.store.add_outgoing_key_request(request)
        return True


def accept_forwards_from_session_owner(client: AsyncClient) -> None:
    """Let nio accept a forwarded key we asked for when its *own creator* sends it.

    nio only accepts forwarded keys from our own verified devices; the bot has no
    other device, so an answer to its key request would be dropped. Accepted here,
    in addition: a key we requested, forwarded by the very device that created the
    session (its Curve25519 and Ed25519 keys match the session's, nobody in between).
    That is exactly as trustworthy as the `m.room_key` that device would send, which
    nio accepts from anyone; a key relayed by any other device is still refused
    (the 2022 forwarded-key attacks relied on that).
    """
    olm = client.olm
    assert olm is not None
    original = olm._should_accept_forward

    def should_accept(sender: str, sender_key: str, event: Any) -> bool:
        if original(sender, sender_key, event):
            return True
        if event.algorithm != MEGOLM or event.session_id not in olm.outgoing_key_requests:
            return False
        request = olm.outgoing_key_requests[event.session_id]
        if event.room_id != request.room_id or event.session_id != request.session_id:
            return False
        content = event.source.get("content", {})
        if content.get("sender_key") != sender_key:
            return False
        if content.get("forwarding_curve25519_key_chain"):
            return False
        device = olm.device_store.device_from_sender_key(sender, sender_key)
        if device is None or device.user_id != sender:
            return False
        return bool(content.get("sender_claimed_ed25519_key") == device.ed25519)

    olm._should_accept_forward = should_accept
