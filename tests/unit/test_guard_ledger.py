"""The ledger's answers to the homeserver guard (bot.domain.guard)."""

from __future__ import annotations

from typing import Any

from bot.domain import guard as g

BOT = "@aplus:aplus.example"
AIDANT = "@aidant:aplus.example"
INSTR = "@instr:aplus.example"
OUTSIDER = "@outsider:aplus.example"
ROOM = "!demande:aplus.example"

OPEN = g.LedgerView(reference="A-2026-000001", room_id=ROOM, members=frozenset({AIDANT, INSTR}))
BEING_MADE = g.LedgerView(reference="A-2026-000001", room_id=None, members=OPEN.members)


def ask(**fields: Any) -> g.Question:
    body = {"action": "invite", "room_id": ROOM, "reference": "A-2026-000001", **fields}
    question = g.parse_question(body)
    assert isinstance(question, g.Question), question
    return question


def test_invites_and_joins_follow_the_ledger_whoever_invites() -> None:
    for action in ("invite", "join"):
        assert g.answer(ask(action=action, user=INSTR), OPEN, BOT).allow
        refused = g.answer(ask(action=action, user=OUTSIDER), OPEN, BOT)
        assert refused == g.Answer(False, g.NOT_IN_LEDGER)
    # The bot's identity proves nothing (make_room_admin, "login as user"): same answer.
    assert not g.answer(ask(user=OUTSIDER, inviter=BOT), OPEN, BOT).allow
    # The bot is always at home in its rooms.
    assert g.answer(ask(action="join", user=BOT), OPEN, BOT).allow


def test_during_create_room_the_invites_are_checked_by_reference() -> None:
    # Synapse invites inside createRoom, before the bot has recorded the room ID.
    assert g.answer(ask(user=INSTR), BEING_MADE, BOT).allow
    assert not g.answer(ask(user=OUTSIDER), BEING_MADE, BOT).allow


def test_a_creation_is_allowed_only_with_ledger_invitees_and_only_once() -> None:
    create = g.parse_question(
        {"action": "create", "reference": "A-2026-000001", "invitees": [AIDANT, INSTR]}
    )
    assert isinstance(create, g.Question)
    assert g.answer(create, BEING_MADE, BOT) == g.ALLOWED
    # A second room for a demande that has one: refused, even with the right invitees.
    assert g.answer(create, OPEN, BOT) == g.Answer(False, g.ROOM_EXISTS)
    sneaky = g.parse_question(
        {"action": "create", "reference": "A-2026-000001", "invitees": [AIDANT, OUTSIDER]}
    )
    assert isinstance(sneaky, g.Question)
    assert g.answer(sneaky, BEING_MADE, BOT) == g.Answer(False, g.NOT_IN_LEDGER)


def test_unknown_demandes_and_other_rooms_are_refused() -> None:
    assert g.answer(ask(user=INSTR), None, BOT) == g.Answer(False, g.UNKNOWN_DEMANDE)
    elsewhere = ask(user=INSTR, room_id="!other:aplus.example")
    assert g.answer(elsewhere, OPEN, BOT) == g.Answer(False, g.OTHER_ROOM)


def test_malformed_questions_are_named() -> None:
    assert g.parse_question([1]) == "not a JSON object"
    assert g.parse_question({"action": "leave", "room_id": ROOM}) == "unknown action"
    assert g.parse_question({"action": "join", "user": INSTR}) == "neither room_id nor reference"
    assert g.parse_question({"action": "join", "room_id": ROOM}) == "no user"
    assert g.parse_question({"action": "create", "room_id": ROOM}) == (
        "a creation names its demande reference"
    )
    assert g.parse_question({"action": "create", "reference": "A", "invitees": "x"}) == (
        "invitees must be a list"
    )
    assert g.parse_question({"action": "create", "reference": "A", "invitees": [3]}) == (
        "invitees must be user IDs"
    )


def test_answers_as_json() -> None:
    assert g.ALLOWED.as_json() == {"allow": True}
    assert g.Answer(False, g.NOT_IN_LEDGER).as_json() == {"allow": False, "reason": "not_in_ledger"}
