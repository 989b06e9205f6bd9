"""Membership decisions: who is kicked, banned, unbanned or invited."""

from __future__ import annotations

from typing import Any

from bot.domain.membership import (
    REASON_UNAUTHORISED,
    Ban,
    Kick,
    Unban,
    missing_invites,
    power_levels_drift,
    reconcile,
    unauthorised_present,
)
from bot.domain.room_spec import canonical_power_levels

BOT = "@aplus:localhost"
AIDANT = "@aidant:localhost"
INSTR = "@instructeur:localhost"
INTRUDER = "@intrus:localhost"
AUTHORISED = {AIDANT, INSTR}


def test_a_clean_room_needs_nothing() -> None:
    members = {BOT: "join", AIDANT: "join", INSTR: "invite"}
    assert reconcile(members, AUTHORISED, BOT, {}) == []
    assert unauthorised_present(members, AUTHORISED, BOT) == set()


def test_intruder_is_kicked_then_banned_when_back() -> None:
    members = {BOT: "join", AIDANT: "join", INTRUDER: "join"}
    assert reconcile(members, AUTHORISED, BOT, {}) == [Kick(INTRUDER, REASON_UNAUTHORISED)]
    (action,) = reconcile(members, AUTHORISED, BOT, {INTRUDER: 1})
    assert isinstance(action, Ban)
    assert action.user_id == INTRUDER
    assert "bloqué" in action.reason


def test_unauthorised_invites_and_knocks_are_revoked() -> None:
    members = {BOT: "join", "@a:localhost": "invite", "@b:localhost": "knock"}
    actions = reconcile(members, AUTHORISED, BOT, {})
    assert [type(a) for a in actions] == [Kick, Kick]
    assert [a.user_id for a in actions] == ["@a:localhost", "@b:localhost"]
    assert "Demande d'accès refusée" in actions[1].reason


def test_left_and_banned_outsiders_and_authorised_leavers_are_left_alone() -> None:
    members = {BOT: "join", "@gone:localhost": "leave", "@out:localhost": "ban", AIDANT: "leave"}
    assert reconcile(members, AUTHORISED, BOT, {"@gone:localhost": 3}) == []


def test_never_act_on_the_bot() -> None:
    for membership in ("join", "invite", "ban", "knock", "leave"):
        assert reconcile({BOT: membership}, set(), BOT, {BOT: 5}) == []
        assert unauthorised_present({BOT: membership}, set(), BOT) == set()
        assert missing_invites({BOT: membership}, {BOT}, BOT) == []


def test_authorised_user_banned_earlier_is_unbanned() -> None:
    (action,) = reconcile({BOT: "join", INSTR: "ban"}, AUTHORISED, BOT, {INSTR: 2})
    assert isinstance(action, Unban)
    assert action.user_id == INSTR


def test_actions_are_sorted_for_stable_logs() -> None:
    members = {"@z:localhost": "join", "@a:localhost": "join", "@m:localhost": "invite"}
    assert [a.user_id for a in reconcile(members, set(), BOT, {})] == [
        "@a:localhost",
        "@m:localhost",
        "@z:localhost",
    ]


def test_missing_invites() -> None:
    members = {BOT: "join", AIDANT: "join", "@left:localhost": "leave", "@k:localhost": "knock"}
    authorised = {AIDANT, INSTR, "@left:localhost", "@k:localhost", "@new:localhost", BOT}
    assert missing_invites(members, authorised, BOT) == [
        "@instructeur:localhost",
        "@k:localhost",
        "@left:localhost",
        "@new:localhost",
    ]


def test_unauthorised_present_counts_join_and_invite_only() -> None:
    members = {
        BOT: "join",
        AIDANT: "join",
        "@j:localhost": "join",
        "@i:localhost": "invite",
        "@k:localhost": "knock",
        "@l:localhost": "leave",
        "@b:localhost": "ban",
    }
    assert unauthorised_present(members, AUTHORISED, BOT) == {"@j:localhost", "@i:localhost"}


def test_power_levels_drift() -> None:
    canonical = canonical_power_levels(BOT, "12")
    # What Synapse stores: our override plus keys we do not manage.
    current: dict[str, Any] = {**canonical, "historical": 100, "notifications": {"room": 50}}
    assert not power_levels_drift(current, canonical)

    assert power_levels_drift({**current, "invite": 0}, canonical)
    assert power_levels_drift({**current, "users": {INTRUDER: 100}}, canonical)
    assert power_levels_drift({**current, "users": {INTRUDER: 0}}, canonical)
    events = {**canonical["events"], "m.room.name": 0}
    assert power_levels_drift({**current, "events": events}, canonical)
    events = {**canonical["events"], "m.custom": 0}
    assert power_levels_drift({**current, "events": events}, canonical)
    without_kick = {k: v for k, v in current.items() if k != "kick"}
    assert power_levels_drift(without_kick, canonical)
    assert power_levels_drift({**current, "ban": "oops"}, canonical)
    assert power_levels_drift({**current, "events": "oops"}, canonical)
    # Legacy rooms may store levels as strings: same value, no drift.
    assert not power_levels_drift({**current, "ban": "100"}, canonical)
    # Before v12 the bot is listed; demoting it is a drift.
    legacy = canonical_power_levels(BOT, "10")
    assert not power_levels_drift(dict(legacy), legacy)
    assert power_levels_drift({**legacy, "users": {BOT: 50}}, legacy)
