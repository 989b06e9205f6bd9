"""What the guard decides, as pure functions (no Synapse, no I/O): unit-tested alone.

A *demande room* is one the bot created (``m.room.create`` sent by the bot's account)
and that carries the ``fr.aplus.demande`` state. Every other room is left alone, with
no question to the bot. In a demande room, every invite and every join is a question
for the bot's ledger (``Ask``), including the bot's own invites: an admin who borrows
the bot's identity ("login as user", ``make_room_admin``) invites *as the bot*, so the
identity proves nothing; the ledger does.

Inputs come from clients (``/createRoom`` bodies) or from Synapse's database, so every
function here accepts any JSON-shaped value and never raises on a malformed one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEMANDE_STATE_TYPE = "fr.aplus.demande"
CREATE_TYPE = "m.room.create"
POWER_LEVELS_TYPE = "m.room.power_levels"

# The extra field of every refusal (the 403's JSON body), read by the bot and by tests.
REASON_FIELD = "fr.aplus.reason"
# No bot answered in time: refused, and the bot retries its own invites later.
UNAVAILABLE = "unavailable"
# The bot's ledger does not list this person for this demande (the bot's usual answer).
NOT_IN_LEDGER = "not_in_ledger"
# Only the bot creates rooms that carry the demande state.
RESERVED_STATE = "reserved_state"
# A demande room never gets invitations by email (third-party invites).
THIRD_PARTY_INVITE = "third_party_invite"
# Power in a demande room belongs to the bot alone (make_room_admin's first step).
POWER_LEVELS = "power_levels"
# A bot's refusal with no usable reason.
REFUSED = "refused"

_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# The bot's check endpoint, under each configured base URL.
CHECK_PATH = "/aplus-guard/v1/check"


@dataclass(frozen=True, slots=True)
class Allow:
    """Let Synapse go on (``NOT_SPAM``)."""


ALLOW = Allow()


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse with ``fr.aplus.reason: reason`` in the 403."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask the bot; ``question`` is the JSON body of the check request."""

    question: dict[str, Any] = field(default_factory=dict)


Step = Allow | Refuse | Ask


@dataclass(frozen=True, slots=True)
class RoomFacts:
    """What Synapse's database says about a room, reduced to what the rules need."""

    creator: str | None  # sender of m.room.create; None: the server does not know the room
    has_demande_state: bool
    reference: str | None  # fr.aplus.demande's "reference", when it is a string

    @classmethod
    def of(cls, creator: object, demande_content: object | None) -> RoomFacts:
        """From the create event's sender and the demande state's content (None: absent)."""
        reference = None
        if isinstance(demande_content, Mapping):
            value = demande_content.get("reference")
            reference = value if isinstance(value, str) else None
        return cls(
            creator=creator if isinstance(creator, str) else None,
            has_demande_state=demande_content is not None,
            reference=reference,
        )


def is_demande_room(room: RoomFacts, bot_user_id: str) -> bool:
    return room.has_demande_state and room.creator == bot_user_id


def on_create_room(user_id: str, room_config: object, bot_user_id: str) -> Step:
    """``user_may_create_room``: the whole invite list is checked before the room exists."""
    config = room_config if isinstance(room_config, Mapping) else {}
    demande_state = _demande_state_in(config.get("initial_state"))
    if demande_state is None:
        return ALLOW
    if user_id != bot_user_id:
        # Such a room would not be a demande room for this module (wrong creator), but it
        # would look like one to people: nobody but the bot makes one.
        return Refuse(RESERVED_STATE)
    if config.get("invite_3pid"):
        return Refuse(THIRD_PARTY_INVITE)
    invite = config.get("invite")
    invitees = [u for u in invite if isinstance(u, str)] if isinstance(invite, list) else []
    reference = demande_state.get("reference")
    return Ask(
        {
            "action": "create",
            "room_id": None,
            "reference": reference if isinstance(reference, str) else None,
            "inviter": user_id,
            "invitees": sorted(set(invitees)),
        }
    )


def on_invite(inviter: str, invitee: str, room_id: str, room: RoomFacts, bot_user_id: str) -> Step:
    """``user_may_invite``: in a demande room, the ledger decides, whoever invites."""
    if not is_demande_room(room, bot_user_id):
        return ALLOW
    return Ask(
        {
            "action": "invite",
            "room_id": room_id,
            "reference": room.reference,
            "inviter": inviter,
            "user": invitee,
        }
    )


def on_join(
    user_id: str, room_id: str, is_invited: bool, room: RoomFacts, bot_user_id: str
) -> Step:
    """``user_may_join_room``: an invite is not enough, the ledger must still list them."""
    if not is_demande_room(room, bot_user_id):
        return ALLOW
    return Ask(
        {
            "action": "join",
            "room_id": room_id,
            "reference": room.reference,
            "user": user_id,
            "is_invited": bool(is_invited),
        }
    )


def on_power_levels(content: object, room: RoomFacts, bot_user_id: str) -> Step:
    """``check_event_for_spam`` for ``m.room.power_levels``: nobody but the bot holds power.

    Synapse's ``make_room_admin`` first sends, as the bot, power levels that give the
    admin the bot's level; this refuses that event (and the same change made by an admin
    logged in as the bot). The bot's own power levels give nobody else any power.
    """
    if not is_demande_room(room, bot_user_id):
        return ALLOW
    levels = content if isinstance(content, Mapping) else {}
    default = levels.get("users_default", 0)
    if not _is_level(default) or default > 0:
        return Refuse(POWER_LEVELS)
    users = levels.get("users", {})
    if not isinstance(users, Mapping):
        return Refuse(POWER_LEVELS)
    for user, level in users.items():
        if user == bot_user_id:
            continue
        if not _is_level(level) or level > 0:
            return Refuse(POWER_LEVELS)
    return ALLOW


def read_answer(status: int, body: object) -> Allow | Refuse | None:
    """The bot's answer, or None when it is not one (try the next URL, then fail closed)."""
    if status != 200 or not isinstance(body, Mapping):
        return None
    allow = body.get("allow")
    if allow is True:
        return ALLOW
    if allow is False:
        reason = body.get("reason")
        if isinstance(reason, str) and _REASON_RE.match(reason):
            return Refuse(reason)
        return Refuse(REFUSED)
    return None


def check_url(base_url: str) -> str:
    return base_url.rstrip("/") + CHECK_PATH


def _demande_state_in(initial_state: object) -> Mapping[str, Any] | None:
    """The content of the ``fr.aplus.demande`` entry of an ``initial_state``, if any."""
    if not isinstance(initial_state, list):
        return None
    for entry in initial_state:
        if isinstance(entry, Mapping) and entry.get("type") == DEMANDE_STATE_TYPE:
            content = entry.get("content")
            return content if isinstance(content, Mapping) else {}
    return None


def _is_level(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
