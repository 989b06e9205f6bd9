"""Room membership decisions: what must change so a room matches its ledger.

Pure: the caller gives the room's current memberships (user_id → membership)
and the authorised participants; the functions say whom to kick, ban, unban or
invite. The bot itself is never acted upon.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

JOIN = "join"
INVITE = "invite"
LEAVE = "leave"
BAN = "ban"
KNOCK = "knock"

# Invited users count as present: their devices already receive the room keys.
PRESENT = frozenset({JOIN, INVITE})

REASON_UNAUTHORISED = (
    "Accès non autorisé à cette demande : seuls les participants désignés "
    "par le service peuvent y être."
)
REASON_KNOCK = (
    "Demande d'accès refusée : seuls les participants désignés par le service "
    "peuvent rejoindre cette demande."
)
REASON_BAN = (
    "Accès non autorisé à cette demande, à nouveau après un premier retrait : "
    "l'accès est désormais bloqué."
)
REASON_UNBAN = "Vous êtes désormais participant de cette demande : accès rétabli."


@dataclass(frozen=True, slots=True)
class Kick:
    user_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ban:
    user_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unban:
    """An authorised user banned earlier (as an intruder) must be unbanned to be invited."""

    user_id: str
    reason: str


Action = Kick | Ban | Unban


def reconcile(
    members: Mapping[str, str],
    authorised: Collection[str],
    bot_user_id: str,
    offences: Mapping[str, int],
) -> list[Action]:
    """Actions that bring the room back to its ledger, sorted by user for stable logs.

    `offences` counts how many times each user was already removed from this room:
    a second intrusion is a ban. Authorised users who left are not brought back
    here: leaving is their right.
    """
    allowed = set(authorised)
    actions: list[Action] = []
    for user_id in sorted(members):
        if user_id == bot_user_id:
            continue
        membership = members[user_id]
        if user_id in allowed:
            if membership == BAN:
                actions.append(Unban(user_id, REASON_UNBAN))
            continue
        if membership not in PRESENT and membership != KNOCK:
            continue
        if offences.get(user_id, 0) >= 1:
            actions.append(Ban(user_id, REASON_BAN))
        elif membership == KNOCK:
            actions.append(Kick(user_id, REASON_KNOCK))
        else:
            actions.append(Kick(user_id, REASON_UNAUTHORISED))
    return actions


def missing_invites(
    members: Mapping[str, str], authorised: Collection[str], bot_user_id: str
) -> list[str]:
    """Authorised users neither joined nor invited, for the creation/invite step.

    The caller passes the participants it is adding now; a banned one needs the
    `Unban` that `reconcile` produces first.
    """
    return sorted(
        user_id
        for user_id in set(authorised)
        if user_id != bot_user_id and members.get(user_id) not in PRESENT
    )


def unauthorised_present(
    members: Mapping[str, str], authorised: Collection[str], bot_user_id: str
) -> set[str]:
    """Who would receive the keys of the next message without being authorised.

    Checked before every send: if not empty, do not send.
    """
    allowed = set(authorised)
    return {
        user_id
        for user_id, membership in members.items()
        if membership in PRESENT and user_id != bot_user_id and user_id not in allowed
    }


# Defaults of the Matrix spec for keys absent from m.room.power_levels.
_SPEC_DEFAULTS: dict[str, Any] = {
    "ban": 50,
    "kick": 50,
    "invite": 0,
    "redact": 50,
    "events_default": 0,
    "state_default": 50,
    "users_default": 0,
    "events": {},
    "users": {},
}


def _level(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)  # legacy rooms (before v10) may hold levels as strings
    return None


def _levels(value: Any) -> dict[str, int | None] | None:
    if not isinstance(value, Mapping):
        return None
    return {str(k): _level(v) for k, v in value.items()}


def power_levels_drift(current: Mapping[str, Any], canonical: Mapping[str, Any]) -> bool:
    """True if the room's power levels differ from the canonical ones: any threshold,
    per-event or per-user level, every key the canonical content states, and the
    keys the spec defaults when absent (so a removed key is a change too)."""
    for key in set(_SPEC_DEFAULTS) | set(canonical):
        want = canonical.get(key, _SPEC_DEFAULTS.get(key))
        have = current.get(key, _SPEC_DEFAULTS.get(key))
        if isinstance(want, Mapping):
            wanted, found = _levels(want), _levels(have)
            if found is None or None in found.values() or wanted != found:
                return True
        elif _level(have) is None or _level(have) != _level(want):
            return True
    return False
