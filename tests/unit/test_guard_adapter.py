"""The Synapse adapter of the guard never raises and fails closed (a fake ModuleApi).

Only the failure paths are here: what Synapse does with the answers, and the paths
where the bot answers, are tested against the real Synapse
(tests/integration/test_guard_synapse.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from synapse.module_api import NOT_SPAM
from synapse.module_api.errors import Codes, ConfigError

from synapse_module import decision
from synapse_module.aplus_guard import AplusGuard
from synapse_module.config import GuardConfig

BOT = "@aplus:aplus.example"
UNAVAILABLE = (Codes.UNKNOWN, {decision.REASON_FIELD: decision.UNAVAILABLE})


class Event:
    def __init__(self, sender: str, content: dict[str, Any], etype: str = "x") -> None:
        self.sender = sender
        self.content = content
        self.type = etype
        self.room_id = "!room:aplus.example"

    def is_state(self) -> bool:
        return True


class FakeHttp:
    def __init__(self) -> None:
        self.urls: list[str] = []

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.urls.append(url)
        raise ConnectionRefusedError(url)


class FakeApi:
    def __init__(self, state: dict[tuple[str, str], Event] | Exception) -> None:
        self.state = state
        self.callbacks: dict[str, Any] = {}
        self.http_client = FakeHttp()

    def register_spam_checker_callbacks(self, **callbacks: Any) -> None:
        self.callbacks = callbacks

    async def get_room_state(self, room_id: str, event_filter: Any) -> Any:
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


DEMANDE_STATE = {
    (decision.CREATE_TYPE, ""): Event(BOT, {}),
    (decision.DEMANDE_STATE_TYPE, ""): Event(BOT, {"reference": "A-2026-000001"}),
}
CONFIG = GuardConfig(
    bot_user_id=BOT,
    api_urls=("http://127.0.0.1:9181", "http://10.0.0.2:9181"),
    timeout_seconds=2,
    shared_secret="s" * 40,
)


def guard(state: dict[tuple[str, str], Event] | Exception) -> tuple[AplusGuard, FakeApi]:
    api = FakeApi(state)
    return AplusGuard(CONFIG, api), api  # type: ignore[arg-type]


def test_it_registers_the_four_callbacks() -> None:
    _, api = guard({})
    assert set(api.callbacks) == {
        "user_may_create_room",
        "user_may_invite",
        "user_may_join_room",
        "check_event_for_spam",
    }


async def test_other_rooms_pass_without_a_request() -> None:
    g, api = guard({(decision.CREATE_TYPE, ""): Event("@someone:aplus.example", {})})
    assert await g.user_may_invite("@a:x", "@b:x", "!dm:x") == NOT_SPAM
    assert await g.user_may_join_room("@b:x", "!dm:x", True) == NOT_SPAM
    assert await g.user_may_create_room("@a:x", {"invite": ["@b:x"]}) == NOT_SPAM
    assert await g.check_event_for_spam(Event("@a:x", {"body": "x"}, "m.room.message")) == NOT_SPAM
    assert api.http_client.urls == []


async def test_no_bot_answering_is_a_refusal_after_asking_each_url() -> None:
    g, api = guard(DEMANDE_STATE)
    assert await g.user_may_join_room("@b:x", "!room:x", True) == UNAVAILABLE
    assert api.http_client.urls == [
        "http://127.0.0.1:9181/aplus-guard/v1/check",
        "http://10.0.0.2:9181/aplus-guard/v1/check",
    ]
    assert await g.user_may_invite(BOT, "@b:x", "!room:x") == UNAVAILABLE
    body = {"initial_state": [{"type": decision.DEMANDE_STATE_TYPE, "content": {}}]}
    assert await g.user_may_create_room(BOT, body) == UNAVAILABLE


async def test_an_internal_error_is_a_refusal_never_an_exception() -> None:
    g, _ = guard(RuntimeError("database gone"))
    assert await g.user_may_invite(BOT, "@b:x", "!room:x") == UNAVAILABLE
    assert await g.user_may_join_room("@b:x", "!room:x", False) == UNAVAILABLE
    levels = Event(BOT, {"users": {}}, decision.POWER_LEVELS_TYPE)
    assert await g.check_event_for_spam(levels) == UNAVAILABLE
    g, _ = guard({})
    assert await g.user_may_create_room(BOT, None) == NOT_SPAM  # type: ignore[arg-type]


async def test_power_levels_are_refused_locally() -> None:
    g, api = guard(DEMANDE_STATE)
    grab = Event(BOT, {"users": {"@admin:aplus.example": 100}}, decision.POWER_LEVELS_TYPE)
    assert await g.check_event_for_spam(grab) == (
        Codes.FORBIDDEN,
        {decision.REASON_FIELD: decision.POWER_LEVELS},
    )
    assert api.http_client.urls == []


def test_a_wrong_config_is_synapses_config_error_with_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        AplusGuard.parse_config({"bot_user_id": BOT, "api_urls": []})
    assert caught.value.path == ("api_urls",)
    assert "liste non vide" in caught.value.msg
