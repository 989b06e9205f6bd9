"""Who gets the room key of the bot's next message, and who is told they are left out.

Pure: the Matrix adapter gathers the devices (with whether their owner cross-signed
them) and what the current Megolm session was already shared with; this module
decides. The rules:

- only devices of participants the ledger authorises, present in the room, get a key;
- with ``require_cross_signed``, only devices their owner cross-signed (the rule
  Element applies since MSC4153); the others of an authorised user get an
  ``m.room_key.withheld`` with code ``m.unverified``;
- users the ledger does not authorise get nothing at all, not even a withheld
  notice: the bot never sends anything to an intruder's devices;
- a device that had the current session and may no longer have it (user removed,
  device deleted or no longer signed) forces a new session for everyone.

A device that appears after messages were sent (the instructeur who opens Element
on a new computer after the demande was opened) catches up: `plan_catch_up` gives
it the bot's earlier session keys of the rooms where its owner is authorised and
present, each as first meant for that owner (so from the owner's arrival on, never
earlier), under the same rules (cross-signed by the owner, or withheld).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from html import escape
from urllib.parse import quote


class WithheldCode(StrEnum):
    """Codes of `m.room_key.withheld` (Matrix spec, client-server API)."""

    UNVERIFIED = "m.unverified"
    UNAUTHORISED = "m.unauthorised"
    NO_OLM = "m.no_olm"


# Read by people (some clients show them): in French, like every text of the service.
WITHHELD_REASONS: Mapping[WithheldCode, str] = {
    WithheldCode.UNVERIFIED: (
        "Cette session n'est pas vérifiée : le service ne transmet les clés qu'aux sessions "
        "vérifiées par leur propriétaire. Vérifiez-la depuis une autre de vos sessions ou "
        "avec votre clé de récupération."
    ),
    WithheldCode.UNAUTHORISED: "Vous n'êtes pas autorisé(e) à lire cette conversation.",
    WithheldCode.NO_OLM: (
        "Le service n'a pas pu établir de canal chiffré avec cette session ; "
        "réessayez plus tard ou reconnectez-la."
    ),
}


def unverified_session_notice(user_id: str, device_id: str) -> tuple[str, str]:
    """What the person is told, once per session, where that session can read it.

    Sent in clear in the demande room (an unverified session can decrypt nothing the
    service sends): so only what the homeserver already knows, the account and the
    session's ID, never the usager's data nor the session's display name.
    """
    link = escape(f"https://matrix.to/#/{quote(user_id, safe='@:')}", quote=True)
    who, session = escape(user_id), escape(device_id)
    body = (
        f"{user_id} : votre session {device_id} ne peut pas lire les messages de ce salon, "
        "car elle n'est pas vérifiée. Pourquoi : pour protéger les données des usagers, le "
        "service ne transmet les clés de chiffrement qu'aux sessions que leur propriétaire "
        "a vérifiées, comme le fait Element. Que faire : vérifiez cette session depuis une "
        "autre de vos sessions déjà vérifiée (dans Element : Paramètres, Sessions, "
        "Vérifier la session), ou avec votre clé de récupération. Les messages deviennent "
        "lisibles sur cette session dès qu'elle est vérifiée. (Message non chiffré, pour "
        "que cette session puisse le lire : il ne contient aucune donnée de la demande.)"
    )
    html = (
        f'<p><a href="{link}">{who}</a> : votre session <code>{session}</code> ne peut '
        "pas lire les messages de ce salon, car elle n'est pas vérifiée.</p>"
        "<p><strong>Pourquoi :</strong> pour protéger les données des usagers, le service ne "
        "transmet les clés de chiffrement qu'aux sessions que leur propriétaire a vérifiées, "
        "comme le fait Element.</p>"
        "<p><strong>Que faire :</strong> vérifiez cette session depuis une autre de vos "
        "sessions déjà vérifiée (dans Element : Paramètres, Sessions, Vérifier la session), "
        "ou avec votre clé de récupération. Les messages deviennent lisibles sur cette "
        "session dès qu'elle est vérifiée.</p>"
        "<p><em>Message non chiffré, pour que cette session puisse le lire : il ne contient "
        "aucune donnée de la demande.</em></p>"
    )
    return body, html


DeviceRef = tuple[str, str]  # (user ID, device ID)


@dataclass(frozen=True, slots=True)
class Device:
    """A device as its owner published it, and whether the owner cross-signed it."""

    user_id: str
    device_id: str
    ed25519: str
    curve25519: str
    cross_signed: bool

    @property
    def ref(self) -> DeviceRef:
        return (self.user_id, self.device_id)


@dataclass(frozen=True, slots=True)
class Withhold:
    user_id: str
    device_id: str
    code: WithheldCode

    @property
    def ref(self) -> DeviceRef:
        return (self.user_id, self.device_id)


@dataclass(frozen=True, slots=True)
class KeySharePlan:
    rotate: bool  # start a new Megolm session before sharing
    share: tuple[Device, ...]  # get the (new or current) session key
    withhold: tuple[Withhold, ...]  # told they will not get it
    eligible: frozenset[DeviceRef]  # every device allowed to hold the session
    ignored_users: frozenset[str]  # present but not authorised: sent nothing

    @property
    def nothing_to_do(self) -> bool:
        return not (self.rotate or self.share or self.withhold)


def eligible(device: Device, *, require_cross_signed: bool) -> bool:
    return device.cross_signed or not require_cross_signed


def plan_key_sharing(
    *,
    authorised: Collection[str],
    present: Collection[str],
    devices: Mapping[str, Sequence[Device]],
    require_cross_signed: bool,
    own: DeviceRef,
    shared_with: Collection[DeviceRef],
    withheld_from: Collection[DeviceRef],
) -> KeySharePlan:
    """Decide for one message.

    ``authorised``: the ledger of the room; ``present``: joined or invited members;
    ``devices``: published devices per user (only authorised present users are looked
    at); ``shared_with`` / ``withheld_from``: what the current session was already
    shared with / withheld from (empty when there is no current session).
    """
    users = sorted(set(authorised) & set(present) - {own[0]})
    allowed: list[Device] = []
    refused: list[Withhold] = []
    for user in users:
        for device in sorted(devices.get(user, ()), key=lambda d: d.device_id):
            if device.ref == own or device.user_id != user:
                continue
            if eligible(device, require_cross_signed=require_cross_signed):
                allowed.append(device)
            else:
                refused.append(Withhold(user, device.device_id, WithheldCode.UNVERIFIED))
    allowed_refs = frozenset(d.ref for d in allowed)
    rotate = bool(set(shared_with) - allowed_refs - {own})
    if rotate:
        share = tuple(allowed)
        withhold = tuple(refused)
    else:
        already = set(shared_with)
        told = set(withheld_from)
        share = tuple(d for d in allowed if d.ref not in already)
        withhold = tuple(w for w in refused if w.ref not in told)
    return KeySharePlan(
        rotate=rotate,
        share=share,
        withhold=withhold,
        eligible=allowed_refs,
        ignored_users=frozenset(set(present) - set(authorised) - {own[0]}),
    )


def withheld_content(
    code: WithheldCode, *, room_id: str, session_id: str, sender_key: str
) -> dict[str, str]:
    """The content of an `m.room_key.withheld` to-device event for a Megolm session."""
    return {
        "algorithm": "m.megolm.v1.aes-sha2",
        "room_id": room_id,
        "session_id": session_id,
        "sender_key": sender_key,
        "code": code.value,
        "reason": WITHHELD_REASONS[code],
    }


@dataclass(frozen=True, slots=True)
class KeyToCatchUp:
    """One of the bot's earlier sessions, as it was first meant for a user."""

    room_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class CatchUpPlan:
    send: tuple[tuple[Device, KeyToCatchUp], ...]  # the device gets that session key
    withhold: tuple[tuple[Withhold, KeyToCatchUp], ...]  # told it will not get it

    @property
    def nothing_to_do(self) -> bool:
        return not (self.send or self.withhold)


def plan_catch_up(
    *,
    user_id: str,
    devices: Sequence[Device],
    keys: Sequence[KeyToCatchUp],
    authorised_rooms: Collection[str],
    present_rooms: Collection[str],
    delivered: Collection[tuple[str, str]],
    told: Collection[tuple[str, str]],
    require_cross_signed: bool,
    own: DeviceRef,
) -> CatchUpPlan:
    """Which of a user's devices get which of the bot's earlier session keys.

    ``keys``: the sessions archived for that user; ``authorised_rooms``: rooms whose
    ledger authorises the user today; ``present_rooms``: rooms where the user is
    joined or invited; ``delivered`` / ``told``: (session ID, device ID) pairs that
    already hold the key / were already told it is withheld.
    """
    if user_id == own[0]:
        return CatchUpPlan((), ())
    usable = [k for k in keys if k.room_id in authorised_rooms and k.room_id in present_rooms]
    send: list[tuple[Device, KeyToCatchUp]] = []
    withhold: list[tuple[Withhold, KeyToCatchUp]] = []
    for device in sorted(devices, key=lambda d: d.device_id):
        if device.user_id != user_id or device.ref == own:
            continue
        ok = eligible(device, require_cross_signed=require_cross_signed)
        for key in usable:
            pair = (key.session_id, device.device_id)
            if pair in delivered:
                continue
            if ok:
                send.append((device, key))
            elif pair not in told:
                withhold.append((Withhold(user_id, device.device_id, WithheldCode.UNVERIFIED), key))
    return CatchUpPlan(tuple(send), tuple(withhold))
