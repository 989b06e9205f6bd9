"""The fakes stay true to the adapters they stand for.

A service test is only worth something if the fake answers the calls the real adapter
answers. These tests fail as soon as the real gateway or relay gains, loses or changes
a public method that the fake does not follow (same name, same parameters, same
defaults, same annotations), or the port asks for something the fake lacks.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from bot.matrix.gateway import MatrixGateway
from bot.matrix.port import Gateway
from bridge.delivery import Relay, RelayConnection, SmtpConnection, SmtpRelay
from tests.services.fakes import RecordingConnection, RecordingGateway, RecordingRelay


def _public(cls: type) -> dict[str, Any]:
    """Public methods and properties defined by the class itself (not `object`'s)."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, type(Gateway).__mro__[-1]):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or not (callable(value) or isinstance(value, property)):
                continue
            out[name] = value
    return out


def _shape(member: Any) -> tuple[str, str]:
    """(kind, signature) with the `self` parameter and its class out of the way."""
    if isinstance(member, property):
        assert member.fget is not None
        return "property", str(inspect.signature(member.fget).return_annotation)
    kind = "async" if inspect.iscoroutinefunction(member) else "sync"
    signature = inspect.signature(member)
    params = [p for name, p in signature.parameters.items() if name != "self"]
    return kind, str(signature.replace(parameters=params))


PAIRS = [
    pytest.param(MatrixGateway, RecordingGateway, id="gateway"),
    pytest.param(SmtpRelay, RecordingRelay, id="relay"),
    pytest.param(SmtpConnection, RecordingConnection, id="relay-connection"),
]


@pytest.mark.parametrize(("real", "fake"), PAIRS)
def test_fake_has_every_public_method_of_the_real_adapter(real: type, fake: type) -> None:
    fake_members = _public(fake)
    missing = sorted(set(_public(real)) - set(fake_members))
    assert not missing, f"{fake.__name__} lacks {missing}"
    for name, member in _public(real).items():
        if isinstance(member, property) and not isinstance(fake_members[name], property):
            continue  # a plain attribute of the fake may stand for a property
        assert _shape(fake_members[name]) == _shape(member), name


PORTS = [
    pytest.param(Gateway, MatrixGateway, RecordingGateway, id="gateway"),
    pytest.param(Relay, SmtpRelay, RecordingRelay, id="relay"),
    pytest.param(RelayConnection, SmtpConnection, RecordingConnection, id="relay-connection"),
]


@pytest.mark.parametrize(("port", "real", "fake"), PORTS)
def test_port_members_are_on_both_sides_with_its_signature(
    port: type, real: type, fake: type
) -> None:
    members = _public(port)
    assert members, port
    for name, member in members.items():
        for side in (real, fake):
            if isinstance(member, property):
                # The real gateway holds some as plain attributes (set in __init__).
                assert name in _public(side) or name in _init_attributes(side), (side, name)
                continue
            assert name in _public(side), (side.__name__, name)
            assert _shape(_public(side)[name]) == _shape(member), (side.__name__, name)


def _init_attributes(cls: type) -> set[str]:
    source = inspect.getsource(cls.__init__)  # type: ignore[misc]
    return {
        line.split("self.", 1)[1].split(" ", 1)[0].split(":", 1)[0]
        for line in source.splitlines()
        if line.strip().startswith("self.") and "=" in line
    }


def test_the_drift_check_sees_a_changed_signature() -> None:
    """The check itself: a fake whose `kick` lost its reason would be caught."""

    class Drifted(RecordingGateway):
        async def kick(self, room_id: str, user_id: str) -> None:  # type: ignore[override]
            return None

    assert _shape(_public(Drifted)["kick"]) != _shape(_public(MatrixGateway)["kick"])
