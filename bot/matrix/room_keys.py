"""Room keys: sharing ours with the devices the rules allow, asking for the ones we miss.

Why not nio's `share_group_session`: it shares with every device nio knows of the
users given, and nio trusts no device through cross-signing. Here the devices come
from `DeviceTrust` (our own check of the cross-signing chain) and the decision from
`bot.domain.key_sharing`; nio only provides the Olm sessions and encryption.

Every session the bot starts is kept (`KeyArchive`, sealed in the database), as
first meant for each participant: a device of theirs that appears later (a new
computer, Element opened after the demande) gets those keys as an `m.room_key`
from the bot's own device, over Olm, exactly what the first recipients got.
Forwarding (`m.forwarded_room_key`) would not do: Element's crypto refuses forwarded
keys from another user. The catch-up runs for users whose devices changed
(`device_lists.changed`) or whose membership changed, after each sync batch.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from nio import AsyncClient, MegolmEvent
from nio.crypto import OlmDevice
from nio.crypto.key_request import OutgoingKeyRequest
from nio.crypto.sessions import OutboundGroupSession

from bot.domain.key_sharing import (
    CatchUpPlan,
    Device,
    DeviceRef,
    KeySharePlan,
    KeyToCatchUp,
    WithheldCode,
    Withhold,
    plan_catch_up,
    plan_key_sharing,
    withheld_content,
)
from bot.matrix.device_trust import DeviceTrust

log = logging.getLogger(__name__)

MEGOLM = "m.megolm.v1.aes-sha2"
TO_DEVICE_CHUNK = 100

RequestFn = Callable[..., Awaitable[dict[str, Any]]]
ClaimFn = Callable[[dict[str, list[str]]], Awaitable[None]]
PresentFn = Callable[[str], Awaitable[Collection[str]]]
# Told which sessions of authorised participants were refused a key of a room as
# unverified (`m.unverified`), so that the person can be told why, in French.
UnverifiedFn = Callable[[str, Collection[DeviceRef]], Awaitable[None]]


class ArchivedKey(Protocol):
    @property
    def room_id(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def session_key(self) -> str: ...


class KeyArchive(Protocol):
    """Where the bot's session keys are kept (the database, sealed), and who holds them."""

    async def archive(
        self,
        *,
        room_id: str,
        session_id: str,
        first_index: int,
        session_key: str,
        users: Collection[str],
    ) -> None: ...

    async def delivered(self, session_id: str, devices: Collection[DeviceRef]) -> None: ...

    async def keys_for(self, user_id: str) -> Sequence[ArchivedKey]:
        """The user's keys, only in rooms whose ledger authorises them today."""
        ...

    async def deliveries(self, user_id: str) -> set[tuple[str, str]]: ...


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


@dataclass(frozen=True)
class CatchUpResult:
    user_id: str
    plan: CatchUpPlan
    sent: tuple[tuple[DeviceRef, str], ...]  # (device, session ID)
    withheld: tuple[tuple[Withhold, str], ...]


class RoomKeySharer:
    def __init__(
        self,
        client: AsyncClient,
        request: RequestFn,
        claim: ClaimFn,
        trust: DeviceTrust,
        *,
        require_cross_signed: bool,
        archive: KeyArchive | None = None,
        on_unverified: UnverifiedFn | None = None,
    ) -> None:
        self.client = client
        self.request = request
        self.claim = claim
        self.trust = trust
        self.require_cross_signed = require_cross_signed
        self.archive = archive
        self.on_unverified = on_unverified
        self._told: dict[str, _Told] = {}
        # session ID → user → the session key as first meant for them (archived). Sessions
        # live in memory only, so this does too.
        self._archived: dict[str, dict[str, str]] = {}
        # (session ID, device ID) already told their key is withheld by the catch-up.
        self._catch_up_told: set[tuple[str, str]] = set()
        self.last: dict[str, ShareResult] = {}  # per room, for tests and diagnostics
        self.last_catch_up: dict[str, CatchUpResult] = {}  # per user, idem

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

    def forget(self, room_id: str) -> None:
        """The room left the bot's memory (the gateway's room cache): its outbound session
        goes too, so that nothing is kept per idle room; the next message starts a new
        session, shared with the members present then, as after a restart."""
        session = self._olm.outbound_group_sessions.pop(room_id, None)
        if session is not None:
            self._archived.pop(session.id, None)
        self._told.pop(room_id, None)
        self.last.pop(room_id, None)

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
            await self._archive(room_id, current, users)
            return None
        fresh = current is None or plan.rotate
        if fresh:
            olm.create_outbound_group_session(room_id)
            told = None
        session = olm.outbound_group_sessions[room_id]
        if told is None or told.session_id != session.id:
            told = self._told[room_id] = _Told(session.id)

        await self._archive(room_id, session, users)
        shared, no_olm = await self._send_keys(room_id, session, plan.share)
        withheld = [*plan.withhold, *(Withhold(u, d, WithheldCode.NO_OLM) for u, d in no_olm)]
        await self._send_withheld(room_id, session.id, withheld)
        await self._tell_unverified(room_id, withheld)
        session.users_shared_with.update(shared)
        if shared and self.archive is not None:
            await self.archive.delivered(session.id, shared)
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

    async def _archive(
        self, room_id: str, session: OutboundGroupSession, users: Collection[str]
    ) -> None:
        """Keep the session key, as it is before the next message, for users not yet kept.

        Before the message is encrypted: the key kept always opens that message.
        """
        done = self._archived.setdefault(session.id, {})
        new = set(users) - set(done) - {self.client.user_id}
        if not new:
            return
        key = session.session_key
        if self.archive is not None:
            await self.archive.archive(
                room_id=room_id,
                session_id=session.id,
                first_index=session.message_index,
                session_key=key,
                users=new,
            )
        done.update(dict.fromkeys(new, key))

    async def _send_keys(
        self, room_id: str, session: OutboundGroupSession, targets: tuple[Device, ...]
    ) -> tuple[list[DeviceRef], list[DeviceRef]]:
        # Each device gets the key as first meant for its owner: a device that appears
        # mid-session reads from its owner's arrival, not only from now on (nio, unlike
        # Element, keeps the first key it gets for a session, so it must be that one).
        first = self._archived.get(session.id, {})
        return await self._send_room_keys(
            [
                (
                    device,
                    {
                        "algorithm": MEGOLM,
                        "room_id": room_id,
                        "session_id": session.id,
                        "session_key": first.get(device.user_id, session.session_key),
                    },
                )
                for device in targets
            ]
        )

    async def _send_room_keys(
        self, targets: Sequence[tuple[Device, dict[str, Any]]]
    ) -> tuple[list[DeviceRef], list[DeviceRef]]:
        """Send each `m.room_key` content to its device over Olm.

        Returns the devices that were sent one, and those that cannot be reached
        (unknown to nio under these keys, or no one-time key to start an Olm session).
        Several keys for one device go in successive requests (one message per device
        per request).
        """
        olm = self._olm
        resolved: list[tuple[OlmDevice, dict[str, Any]]] = []
        unusable: list[DeviceRef] = []
        for device, content in targets:
            known = self._nio_device(device)
            if known is None:
                if device.ref not in unusable:
                    unusable.append(device.ref)
            else:
                resolved.append((known, content))
        missing: dict[str, list[str]] = {}
        for known, _ in resolved:
            if not olm.session_store.get(known.curve25519):
                ids = missing.setdefault(known.user_id, [])
                if known.id not in ids:
                    ids.append(known.id)
        if missing:
            await self.claim(missing)
        rounds: list[list[tuple[OlmDevice, dict[str, Any]]]] = []
        seen: dict[DeviceRef, int] = {}
        for known, content in resolved:
            ref = (known.user_id, known.id)
            olm_session = olm.session_store.get(known.curve25519)
            if olm_session is None:
                if ref not in unusable:
                    unusable.append(ref)
                continue
            payload = olm._olm_encrypt(olm_session, known, "m.room_key", content)
            n = seen.get(ref, 0)
            seen[ref] = n + 1
            while len(rounds) <= n:
                rounds.append([])
            rounds[n].append((known, payload))
        shared: list[DeviceRef] = []
        for messages in rounds:
            for start in range(0, len(messages), TO_DEVICE_CHUNK):
                chunk = messages[start : start + TO_DEVICE_CHUNK]
                body: dict[str, dict[str, Any]] = {}
                for known, payload in chunk:
                    body.setdefault(known.user_id, {})[known.id] = payload
                await self._to_device("m.room.encrypted", body)
                for known, _ in chunk:
                    ref = (known.user_id, known.id)
                    if ref not in shared:
                        shared.append(ref)
        return shared, unusable

    # ------------------------------------------------------------ catching up

    async def catch_up(self, users: Iterable[str], present_in: PresentFn) -> list[CatchUpResult]:
        """Give the bot's earlier session keys to the users' devices that miss them."""
        results: list[CatchUpResult] = []
        if self.archive is None:
            return results
        for user in sorted(set(users) - {str(self.client.user_id)}):
            result = await self._catch_up_user(user, present_in)
            if result is not None:
                results.append(result)
        return results

    async def _catch_up_user(self, user: str, present_in: PresentFn) -> CatchUpResult | None:
        assert self.archive is not None
        archived = list(await self.archive.keys_for(user))
        if not archived:
            return None
        rooms = sorted({k.room_id for k in archived})
        present = [room for room in rooms if user in await present_in(room)]
        if not present:
            return None
        devices = (await self.trust.devices([user])).get(user, [])
        delivered = await self.archive.deliveries(user)
        by_session = {k.session_id: k for k in archived}
        plan = plan_catch_up(
            user_id=user,
            devices=devices,
            keys=[KeyToCatchUp(k.room_id, k.session_id) for k in archived],
            authorised_rooms=rooms,  # `keys_for` returns authorised rooms only
            present_rooms=present,
            delivered=delivered,
            told=self._catch_up_told,
            require_cross_signed=self.require_cross_signed,
            own=(str(self.client.user_id), str(self.client.device_id)),
        )
        if plan.nothing_to_do:
            return None
        targets = [
            (
                device,
                {
                    "algorithm": MEGOLM,
                    "room_id": key.room_id,
                    "session_id": key.session_id,
                    "session_key": by_session[key.session_id].session_key,
                },
            )
            for device, key in plan.send
        ]
        shared, unusable = await self._send_room_keys(targets)
        reached = set(shared)
        sent = tuple(
            ((d.user_id, d.device_id), key.session_id)
            for d, key in plan.send
            if (d.user_id, d.device_id) in reached
        )
        withheld = [(w, key.session_id) for w, key in plan.withhold]
        withheld += [
            (Withhold(d.user_id, d.device_id, WithheldCode.NO_OLM), key.session_id)
            for d, key in plan.send
            if d.ref in unusable and (key.session_id, d.device_id) not in self._catch_up_told
        ]
        unverified: dict[str, list[Withhold]] = {}
        for w, session_id in withheld:
            room_id = by_session[session_id].room_id
            await self._send_withheld(room_id, session_id, [w])
            self._catch_up_told.add((session_id, w.device_id))
            unverified.setdefault(room_id, []).append(w)
        for room_id, refused in unverified.items():
            await self._tell_unverified(room_id, refused)
        per_session: dict[str, list[DeviceRef]] = {}
        for ref, session_id in sent:
            per_session.setdefault(session_id, []).append(ref)
        for session_id, refs in per_session.items():
            await self.archive.delivered(session_id, refs)
            self._note_current(by_session[session_id].room_id, session_id, refs)
        result = CatchUpResult(user, plan, sent, tuple(withheld))
        self.last_catch_up[user] = result
        log.info(
            "catch-up: %d earlier room key(s) sent to %d device(s), %d withheld %s, in %d room(s)",
            len(sent),
            len({ref for ref, _ in sent}),
            len(withheld),
            sorted({w.code.value for w, _ in withheld}),
            len(present),
        )
        return result

    async def _tell_unverified(self, room_id: str, withheld: Collection[Withhold]) -> None:
        refs = {w.ref for w in withheld if w.code == WithheldCode.UNVERIFIED}
        if refs and self.on_unverified is not None:
            await self.on_unverified(room_id, refs)

    def _note_current(self, room_id: str, session_id: str, refs: Collection[DeviceRef]) -> None:
        """A device caught up on the current session: the next message needs no new share."""
        current = self._olm.outbound_group_sessions.get(room_id)
        if current is not None and current.id == session_id:
            current.users_shared_with.update(refs)

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
