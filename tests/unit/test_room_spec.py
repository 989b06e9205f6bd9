"""The createRoom body: every field, and no usager data anywhere in it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from bot.domain.form import render_form
from bot.domain.model import DemandeForm, Mandat, MandatType, Usager
from bot.domain.reference import room_name
from bot.domain.room_spec import (
    PROTECTED_STATE_EVENTS,
    canonical_power_levels,
    create_room_body,
    creators_privileged,
)

BOT = "@aplus:aplus.example"
INVITEES = ["@aidant:aplus.example", "@instructeur:caf.example", "@aidant:aplus.example"]
REF = "A-2026-000042"

FORM = DemandeForm(
    territoire="95",
    organisations=("caf",),
    categorie="Social/Famille",
    objet="Rupture de droits au RSA",
    usager=Usager(
        prenom="Jeanne",
        nom="Dupontel",
        date_naissance=date(1980, 3, 5),
        nir="280039512345684",
        numero_allocataire_caf="7654321",
        nif="0123456789012",
        adresse="12 rue des Lilas, Cergy",
        telephone="06 12 34 56 78",
    ),
    description="Madame Dupontel n'a plus de versement depuis janvier.",
    mandat=Mandat(MandatType.PAPIER, date(2026, 3, 10), True),
)


def body(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "reference": REF,
        "name": room_name(REF, ["CAF"], FORM.territoire),
        "bot_user_id": BOT,
        "invitees": INVITEES,
        "allowed_servers": ["caf.example", "aplus.example"],
    }
    args.update(overrides)
    return create_room_body(**args)


def state(b: dict[str, Any], event_type: str) -> dict[str, Any]:
    (event,) = [e for e in b["initial_state"] if e["type"] == event_type]
    assert event["state_key"] == ""
    content: dict[str, Any] = event["content"]
    return content


def test_top_level_fields() -> None:
    b = body()
    assert b["preset"] == "private_chat"
    assert b["visibility"] == "private"
    assert b["room_version"] == "12"
    assert b["name"] == "Demande A-2026-000042 · CAF · 95"
    assert b["invite"] == ["@aidant:aplus.example", "@instructeur:caf.example"]
    assert b["is_direct"] is False
    assert "topic" not in b
    assert set(b) == {
        "preset",
        "visibility",
        "room_version",
        "name",
        "invite",
        "is_direct",
        "initial_state",
        "power_level_content_override",
    }


def test_initial_state() -> None:
    b = body()
    assert [e["type"] for e in b["initial_state"]] == [
        "m.room.encryption",
        "m.room.join_rules",
        "m.room.guest_access",
        "m.room.history_visibility",
        "m.room.server_acl",
        "fr.aplus.demande",
    ]
    assert state(b, "m.room.encryption") == {
        "algorithm": "m.megolm.v1.aes-sha2",
        "rotation_period_ms": 604_800_000,
        "rotation_period_msgs": 100,
    }
    assert state(b, "m.room.join_rules") == {"join_rule": "invite"}
    assert state(b, "m.room.guest_access") == {"guest_access": "forbidden"}
    assert state(b, "m.room.history_visibility") == {"history_visibility": "invited"}
    assert state(b, "m.room.server_acl") == {
        "allow": ["aplus.example", "caf.example"],
        "deny": [],
        "allow_ip_literals": False,
    }
    assert state(b, "fr.aplus.demande") == {"reference": REF, "version": 1}


def test_bot_server_always_allowed() -> None:
    b = body(allowed_servers=[], invitees=["@a:aplus.example"])
    assert state(b, "m.room.server_acl")["allow"] == ["aplus.example"]


def test_invitee_from_a_server_outside_the_acl_is_refused() -> None:
    with pytest.raises(ValueError, match=r"evil\.example"):
        body(invitees=["@x:evil.example"])
    b = body(allowed_servers=["*.gouv.fr"], invitees=["@x:caf.gouv.fr"])
    assert b["invite"] == ["@x:caf.gouv.fr"]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        body(reference="Jeanne Dupontel")
    with pytest.raises(ValueError):
        body(bot_user_id="aplus")
    with pytest.raises(ValueError):
        body(invitees=["jeanne"])


def test_bot_is_never_invited() -> None:
    assert BOT not in body(invitees=[BOT, "@a:aplus.example"])["invite"]


def test_power_levels_v12_creator_not_listed() -> None:
    pl = body()["power_level_content_override"]
    assert pl == canonical_power_levels(BOT, "12")
    assert pl["users"] == {}
    for key in ("invite", "kick", "ban", "redact", "state_default"):
        assert pl[key] == 100, key
    assert pl["events_default"] == 0
    assert pl["users_default"] == 0
    expected_events = {
        "m.room.name",
        "m.room.topic",
        "m.room.avatar",
        "m.room.power_levels",
        "m.room.history_visibility",
        "m.room.join_rules",
        "m.room.encryption",
        "m.room.server_acl",
        "m.room.tombstone",
        "m.room.canonical_alias",
        "m.room.guest_access",
        "fr.aplus.demande",
    }
    assert set(pl["events"]) == expected_events == set(PROTECTED_STATE_EVENTS)
    assert set(pl["events"].values()) == {100}


@pytest.mark.parametrize("version", ["10", "11"])
def test_power_levels_before_v12_list_the_bot(version: str) -> None:
    b = body(room_version=version)
    assert b["room_version"] == version
    assert b["power_level_content_override"]["users"] == {BOT: 100}


@pytest.mark.parametrize(
    ("version", "privileged"),
    [("9", False), ("11", False), ("12", True), ("13", True), ("org.matrix.hydra.11", True)],
)
def test_creators_privileged(version: str, privileged: bool) -> None:
    assert creators_privileged(version) is privileged


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    else:
        yield str(value)


def test_no_personal_data_anywhere_in_the_body() -> None:
    u = FORM.usager
    personal = [
        u.prenom,
        u.nom,
        "1980",
        "05/03",
        "2800395",
        "7654321",
        "0123456789012",
        "Lilas",
        "Cergy",
        "06 12",
        "0612",
        FORM.objet,
        "RSA",
        "versement",
    ]
    strings = list(_strings(body()))
    for value in personal:
        for s in strings:
            assert value.lower() not in s.lower(), (value, s)
    # Sanity: the personal values really are in the form the room is made for.
    rendered = render_form(FORM)
    assert all(value.lower() in rendered.lower() or value == "0612" for value in personal)
