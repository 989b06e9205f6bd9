"""The ledger's answer to the homeserver guard (the Synapse module in `synapse_module/`).

Synapse asks, for every invite and join in a demande room and for every demande room
creation, whether the committed ledger lets that person in. The answer depends on the
ledger alone, never on who asks or who invites: an admin who borrows the bot's identity
invites *as the bot*. The bot itself is always authorised in its own rooms.

The question is a small JSON object (see `synapse_module/decision.py`); a malformed
one is refused, with a reason, by `parse_question`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

Action = Literal["create", "invite", "join"]
ACTIONS: Final[tuple[Action, ...]] = ("create", "invite", "join")

# Reasons, returned to Synapse as `fr.aplus.reason` (lower case, no personal data).
NOT_IN_LEDGER: Final = "not_in_ledger"
UNKNOWN_DEMANDE: Final = "unknown_demande"
ROOM_EXISTS: Final = "room_exists"
OTHER_ROOM: Final = "other_room"

_MAX_INVITEES: Final = 500


@dataclass(frozen=True, slots=True)
class Question:
    action: Action
    room_id: str | None
    reference: str | None
    user: str | None  # invitee or joiner; None for "create"
    invitees: tuple[str, ...]  # "create" only


@dataclass(frozen=True, slots=True)
class LedgerView:
    """One demande as the committed ledger has it."""

    reference: str
    room_id: str | None  # None: the room is being created
    members: frozenset[str]  # Matrix IDs of its active participants


@dataclass(frozen=True, slots=True)
class Answer:
    allow: bool
    reason: str | None = None

    def as_json(self) -> dict[str, object]:
        if self.allow:
            return {"allow": True}
        return {"allow": False, "reason": self.reason}


ALLOWED: Final = Answer(True)


def parse_question(body: object) -> Question | str:
    """The question, or what is wrong with it (an English phrase for the log)."""
    if not isinstance(body, Mapping):
        return "not a JSON object"
    action = body.get("action")
    if action not in ACTIONS:
        return "unknown action"
    room_id = _optional_text(body.get("room_id"))
    reference = _optional_text(body.get("reference"))
    if room_id is None and reference is None:
        return "neither room_id nor reference"
    user = _optional_text(body.get("user"))
    raw_invitees = body.get("invitees", [])
    if not isinstance(raw_invitees, list) or len(raw_invitees) > _MAX_INVITEES:
        return "invitees must be a list"
    if not all(isinstance(i, str) and i for i in raw_invitees):
        return "invitees must be user IDs"
    if action == "create":
        if reference is None:
            return "a creation names its demande reference"
    elif user is None:
        return "no user"
    return Question(
        action=action,
        room_id=room_id,
        reference=reference,
        user=user,
        invitees=tuple(raw_invitees),
    )


def answer(question: Question, ledger: LedgerView | None, bot_user_id: str) -> Answer:
    """May the invite, join or creation go ahead, by the ledger?"""
    if ledger is None:
        return Answer(False, UNKNOWN_DEMANDE)
    authorised = ledger.members | {bot_user_id}
    if question.action == "create":
        # A demande has one room: a second one (an admin logged in as the bot, say) is
        # never part of the ledger, even with the same invitees.
        if ledger.room_id is not None:
            return Answer(False, ROOM_EXISTS)
        if all(user in authorised for user in question.invitees):
            return ALLOWED
        return Answer(False, NOT_IN_LEDGER)
    if question.room_id is not None and ledger.room_id not in (None, question.room_id):
        return Answer(False, OTHER_ROOM)
    if question.user in authorised:
        return ALLOWED
    return Answer(False, NOT_IN_LEDGER)


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
