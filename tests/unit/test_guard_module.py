"""The homeserver guard's rules (synapse_module.decision) and its configuration, without Synapse.

The wiring into the real Synapse is tested in tests/integration/test_guard_synapse.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_module import decision as d
from synapse_module.config import GuardConfigError, parse_guard_config

BOT = "@aplus:aplus.example"
ROOM = "!room:aplus.example"
DEMANDE = d.RoomFacts.of(BOT, {"reference": "A-2026-000042", "version": 1})
SECRET = "s" * 40


def demande_body(invite: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "preset": "private_chat",
        "invite": invite,
        "initial_state": [
            {"type": "m.room.encryption", "state_key": "", "content": {}},
            {"type": d.DEMANDE_STATE_TYPE, "state_key": "", "content": {"reference": "A-1"}},
        ],
        **extra,
    }


# -- which rooms are demande rooms ---------------------------------------------------


def test_a_demande_room_is_the_bots_with_the_demande_state() -> None:
    assert d.is_demande_room(DEMANDE, BOT)
    # The same state in a room someone else created: not ours, left alone.
    assert not d.is_demande_room(d.RoomFacts.of("@mallory:aplus.example", {"reference": "x"}), BOT)
    # The bot's other rooms (admin room, follow-up rooms): left alone.
    assert not d.is_demande_room(d.RoomFacts.of(BOT, None), BOT)
    # A room this server does not know.
    assert not d.is_demande_room(d.RoomFacts.of(None, None), BOT)
    # Present but emptied (or redacted) state still marks the room.
    assert d.is_demande_room(d.RoomFacts.of(BOT, {}), BOT)
    assert d.RoomFacts.of(BOT, {}).reference is None


def test_other_rooms_never_ask_the_bot() -> None:
    dm = d.RoomFacts.of("@agent1:aplus.example", None)
    assert d.on_invite("@agent1:aplus.example", "@agent2:x", ROOM, dm, BOT) is d.ALLOW
    assert d.on_join("@agent2:x", ROOM, True, dm, BOT) is d.ALLOW
    admin_room = d.RoomFacts.of(BOT, None)
    assert d.on_invite(BOT, "@op:aplus.example", ROOM, admin_room, BOT) is d.ALLOW
    assert d.on_create_room("@agent1:aplus.example", {"invite": ["@b:x"]}, BOT) is d.ALLOW
    assert d.on_create_room(BOT, {"name": "Administration+ · suivi"}, BOT) is d.ALLOW


# -- demande rooms: every membership is a question for the ledger -------------------


def test_every_invite_in_a_demande_room_is_asked_even_the_bots() -> None:
    for inviter in (BOT, "@aidant:aplus.example"):
        step = d.on_invite(inviter, "@x:aplus.example", ROOM, DEMANDE, BOT)
        assert step == d.Ask(
            {
                "action": "invite",
                "room_id": ROOM,
                "reference": "A-2026-000042",
                "inviter": inviter,
                "user": "@x:aplus.example",
            }
        )


def test_every_join_in_a_demande_room_is_asked_invited_or_not() -> None:
    for invited in (True, False):
        step = d.on_join("@x:aplus.example", ROOM, invited, DEMANDE, BOT)
        assert isinstance(step, d.Ask)
        assert step.question["action"] == "join"
        assert step.question["is_invited"] is invited
        assert step.question["user"] == "@x:aplus.example"


def test_creating_a_demande_room_asks_about_the_whole_invite_list_first() -> None:
    step = d.on_create_room(BOT, demande_body(["@b:x", "@a:x", "@b:x"]), BOT)
    assert step == d.Ask(
        {
            "action": "create",
            "room_id": None,
            "reference": "A-1",
            "inviter": BOT,
            "invitees": ["@a:x", "@b:x"],
        }
    )


def test_nobody_but_the_bot_creates_a_room_with_the_demande_state() -> None:
    step = d.on_create_room("@mallory:aplus.example", demande_body([]), BOT)
    assert step == d.Refuse(d.RESERVED_STATE)


def test_a_demande_room_takes_no_invitation_by_email() -> None:
    body = demande_body([], invite_3pid=[{"medium": "email", "address": "a@b.fr"}])
    assert d.on_create_room(BOT, body, BOT) == d.Refuse(d.THIRD_PARTY_INVITE)


# -- power levels (make_room_admin's first step) -------------------------------------


def test_power_levels_giving_power_to_anyone_but_the_bot_are_refused() -> None:
    canonical_v12 = {"users": {}, "users_default": 0, "invite": 100, "state_default": 100}
    assert d.on_power_levels(canonical_v12, DEMANDE, BOT) is d.ALLOW
    canonical_v11 = {**canonical_v12, "users": {BOT: 100}}
    assert d.on_power_levels(canonical_v11, DEMANDE, BOT) is d.ALLOW
    # What make_room_admin sends: the admin at the bot's level (100 in v12 rooms).
    make_room_admin = {**canonical_v12, "users": {"@admin:aplus.example": 100}}
    assert d.on_power_levels(make_room_admin, DEMANDE, BOT) == d.Refuse(d.POWER_LEVELS)
    assert d.on_power_levels({**canonical_v12, "users_default": 50}, DEMANDE, BOT) == d.Refuse(
        d.POWER_LEVELS
    )
    assert d.on_power_levels({"users": {"@a:x": "100"}}, DEMANDE, BOT) == d.Refuse(d.POWER_LEVELS)
    assert d.on_power_levels({"users": ["@a:x"]}, DEMANDE, BOT) == d.Refuse(d.POWER_LEVELS)
    # Anywhere else, power levels are nobody's business here.
    other = d.RoomFacts.of("@someone:aplus.example", None)
    assert d.on_power_levels(make_room_admin, other, BOT) is d.ALLOW


# -- the bot's answers ---------------------------------------------------------------


def test_answers_of_the_bot() -> None:
    assert d.read_answer(200, {"allow": True}) is d.ALLOW
    assert d.read_answer(200, {"allow": False, "reason": "not_in_ledger"}) == d.Refuse(
        "not_in_ledger"
    )
    # A reason that is not a plain code is not passed on to clients.
    assert d.read_answer(200, {"allow": False, "reason": "<b>x</b>"}) == d.Refuse(d.REFUSED)
    assert d.read_answer(200, {"allow": False}) == d.Refuse(d.REFUSED)
    # Not an answer: the next URL is asked, then the module refuses (fail closed).
    for status, body in (
        (401, {"allow": True}),
        (503, {"error": "ledger unavailable"}),
        (200, {"allow": "yes"}),
        (200, None),
        (200, ["allow"]),
    ):
        assert d.read_answer(status, body) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(body=JSON, user=st.text(max_size=10))
def test_creation_rules_never_raise_on_any_body(body: object, user: str) -> None:
    d.on_create_room(user, body, BOT)
    d.on_create_room(BOT, {"initial_state": [{"type": d.DEMANDE_STATE_TYPE, "content": body}]}, BOT)


@given(content=JSON)
def test_power_level_rules_never_raise_on_any_content(content: object) -> None:
    assert isinstance(d.on_power_levels(content, DEMANDE, BOT), d.Allow | d.Refuse)
    d.RoomFacts.of(content, content)


@given(status=st.integers(100, 599), body=JSON)
def test_answer_reading_never_raises(status: int, body: object) -> None:
    d.read_answer(status, body)


# -- the configuration ---------------------------------------------------------------


def secret_file(
    tmp_path: Path, value: str = SECRET, mode: int = 0o600, name: str = "guard_secret"
) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "bot_user_id": BOT,
        "api_urls": ["http://127.0.0.1:9181", "http://10.1.2.3:9181/"],
        "shared_secret_path": str(secret_file(tmp_path)),
        "timeout_seconds": 3,
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def test_a_valid_configuration(tmp_path: Path) -> None:
    parsed = parse_guard_config(config(tmp_path))
    assert parsed.bot_user_id == BOT
    assert parsed.api_urls == ("http://127.0.0.1:9181", "http://10.1.2.3:9181")
    assert parsed.shared_secret == SECRET  # the file's newline is not part of it
    assert parsed.timeout_seconds == 3.0
    assert parsed.budget_per_url == 1.5
    assert SECRET not in repr(parsed)
    assert d.check_url(parsed.api_urls[0]) == "http://127.0.0.1:9181/aplus-guard/v1/check"
    default = parse_guard_config(config(tmp_path, timeout_seconds=None))
    assert default.timeout_seconds == 2.0


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"bot_user_id": None}, "bot_user_id", "clé obligatoire"),
        ({"bot_user_id": "aplus"}, "bot_user_id", "@nom:serveur"),
        ({"api_urls": None}, "api_urls", "clé obligatoire"),
        ({"api_urls": "http://127.0.0.1:9181"}, "api_urls", "liste non vide"),
        ({"api_urls": []}, "api_urls", "liste non vide"),
        ({"api_urls": ["http://bot.example.fr:9181"]}, "api_urls", "adresse privée"),
        ({"api_urls": ["http://8.8.8.8:9181"]}, "api_urls", "adresse privée"),
        ({"api_urls": ["http://0.0.0.0:9181"]}, "api_urls", "adresse privée"),
        ({"api_urls": ["http://127.0.0.1"]}, "api_urls", "port manquant"),
        ({"api_urls": ["ftp://127.0.0.1:21"]}, "api_urls", "attendu http://"),
        ({"api_urls": ["http://127.0.0.1:9181/check"]}, "api_urls", "sans chemin"),
        ({"timeout_seconds": 6}, "timeout_seconds", "au plus 5 secondes"),
        ({"timeout_seconds": 0}, "timeout_seconds", "supérieur à 0"),
        ({"timeout_seconds": "2"}, "timeout_seconds", "nombre de secondes"),
        ({"timeout_seconds": True}, "timeout_seconds", "nombre de secondes"),
        ({"shared_secret_path": None}, "shared_secret_path", "clé obligatoire"),
        ({"shared_secret_path": "/nonexistent/x"}, "shared_secret_path", "fichier illisible"),
        ({"shared_secret": "inline"}, "shared_secret", "clé inconnue"),
    ],
)
def test_each_configuration_error_names_its_key(
    tmp_path: Path, changes: dict[str, Any], key: str, words: str
) -> None:
    raw = config(tmp_path)
    for name, value in changes.items():
        if value is None:
            raw.pop(name, None)
        else:
            raw[name] = value
    with pytest.raises(GuardConfigError) as caught:
        parse_guard_config(raw)
    assert caught.value.key == key
    assert words in caught.value.message


def test_the_secret_file_must_be_private_and_long(tmp_path: Path) -> None:
    open_file = secret_file(tmp_path, mode=0o644, name="open")
    with pytest.raises(GuardConfigError, match="chmod 600"):
        parse_guard_config(config(tmp_path, shared_secret_path=str(open_file)))
    raw = config(tmp_path, shared_secret_path=str(secret_file(tmp_path, "court", name="short")))
    with pytest.raises(GuardConfigError, match="au moins 32 caractères"):
        parse_guard_config(raw)
    with pytest.raises(GuardConfigError, match="doit être une table"):
        parse_guard_config(["bot_user_id"])
