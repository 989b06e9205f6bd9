"""Which forwarded room keys the bot accepts (nio's rule plus ours), against a fake olm."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from bot.matrix.room_keys import MEGOLM, accept_forwards_from_session_owner

ALICE = "@alice:localhost"


@dataclass
class FakeDeviceStore:
    devices: dict[tuple[str, str], Any] = field(default_factory=dict)

    def device_from_sender_key(self, user: str, curve: str) -> Any:
        return self.devices.get((user, curve))


class FakeOlm:
    def __init__(self) -> None:
        self.outgoing_key_requests: dict[str, Any] = {}
        self.device_store = FakeDeviceStore()
        self.nio_said: list[tuple[str, str]] = []

    def _should_accept_forward(self, sender: str, sender_key: str, event: Any) -> bool:
        self.nio_said.append((sender, sender_key))
        return False  # nio: only from our own verified devices


def _setup() -> tuple[Any, FakeOlm]:
    olm = FakeOlm()
    olm.device_store.devices[(ALICE, "curveA")] = SimpleNamespace(user_id=ALICE, ed25519="edA")
    olm.outgoing_key_requests["S1"] = SimpleNamespace(room_id="!r", session_id="S1")
    client = SimpleNamespace(olm=olm)
    accept_forwards_from_session_owner(client)
    return client, olm


def _event(**content: Any) -> Any:
    base = {
        "sender_key": "curveA",
        "sender_claimed_ed25519_key": "edA",
        "forwarding_curve25519_key_chain": [],
    }
    base.update(content)
    return SimpleNamespace(
        algorithm=MEGOLM, session_id="S1", room_id="!r", source={"content": base}
    )


def test_a_key_we_asked_for_forwarded_by_the_session_creator_is_accepted() -> None:
    _, olm = _setup()
    assert olm._should_accept_forward(ALICE, "curveA", _event())
    assert olm.nio_said == [(ALICE, "curveA")]  # nio's own rule is asked first


def test_a_key_relayed_by_another_device_is_refused() -> None:
    _, olm = _setup()
    assert not olm._should_accept_forward(ALICE, "curveA", _event(sender_key="curveB"))
    assert not olm._should_accept_forward(
        ALICE, "curveA", _event(forwarding_curve25519_key_chain=["curveB"])
    )
    assert not olm._should_accept_forward(ALICE, "curveA", _event(sender_claimed_ed25519_key="edB"))


def test_a_key_we_did_not_ask_for_or_from_an_unknown_device_is_refused() -> None:
    _, olm = _setup()
    unasked = _event()
    unasked.session_id = "S2"
    assert not olm._should_accept_forward(ALICE, "curveA", unasked)
    assert not olm._should_accept_forward("@mallory:localhost", "curveA", _event())
    wrong_room = _event()
    wrong_room.room_id = "!other"
    assert not olm._should_accept_forward(ALICE, "curveA", wrong_room)
