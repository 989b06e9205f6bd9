"""The `POST /createRoom` body of a demande room and its canonical power levels.

Everything here ends up as room state, which the homeserver (and every server in
the ACL) stores in clear: no usager data, only the reference and catalogue words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bot.domain.reference import parse_reference

DEMANDE_STATE_TYPE = "fr.aplus.demande"
DEMANDE_STATE_VERSION = 1
MEGOLM = "m.megolm.v1.aes-sha2"
# One Megolm session per week or per 100 messages (the spec's defaults, what
# Element expects): a leaked session key then exposes a bounded slice of the
# conversation, and membership changes rotate the session anyway.
ROTATION_PERIOD_MS = 7 * 24 * 3600 * 1000
ROTATION_PERIOD_MSGS = 100

ADMIN = 100

# State only the bot may change: who gets in, how the room is encrypted, what it
# is called and which servers take part.
PROTECTED_STATE_EVENTS: tuple[str, ...] = (
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
    DEMANDE_STATE_TYPE,
)

_USER_ID = re.compile(r"@[^:\s]+:([A-Za-z0-9.\-\[\]]+(?::\d{1,5})?)")


def server_of(user_id: str) -> str:
    m = _USER_ID.fullmatch(user_id)
    if m is None:
        raise ValueError(f"not a Matrix user ID: {user_id!r}")
    return m.group(1)


def creators_privileged(room_version: str) -> bool:
    """Room versions 12 and later (and the "hydra" previews) give creators infinite
    power; listing them in `users` is then an error."""
    if room_version.isdigit():
        return int(room_version) >= 12
    return "hydra" in room_version


def canonical_power_levels(bot_user_id: str, room_version: str = "12") -> dict[str, Any]:
    """Only the bot invites, kicks, bans, redacts others' messages or changes state;
    every participant can talk."""
    server_of(bot_user_id)
    users: dict[str, int] = {} if creators_privileged(room_version) else {bot_user_id: ADMIN}
    return {
        "users": users,
        "users_default": 0,
        "events": dict.fromkeys(PROTECTED_STATE_EVENTS, ADMIN),
        "events_default": 0,
        "state_default": ADMIN,
        "invite": ADMIN,
        "kick": ADMIN,
        "ban": ADMIN,
        "redact": ADMIN,
    }


def _glob(pattern: str) -> re.Pattern[str]:
    # Server ACL globs know only * and ?.
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    )


def acl_allows(allow: Sequence[str], server: str) -> bool:
    return any(_glob(p).fullmatch(server) for p in allow)


def create_room_body(
    *,
    reference: str,
    name: str,
    bot_user_id: str,
    invitees: Sequence[str],
    allowed_servers: Sequence[str],
    room_version: str = "12",
) -> dict[str, Any]:
    """Body of `POST /createRoom` for a new demande."""
    if parse_reference(reference) is None:
        raise ValueError(f"not a demande reference: {reference!r}")
    bot_server = server_of(bot_user_id)
    allow = [bot_server]
    for server in allowed_servers:
        if server and server not in allow:
            allow.append(server)
    invite: list[str] = []
    for user_id in invitees:
        server = server_of(user_id)
        if not acl_allows(allow, server):
            # The ACL would drop their events: refuse now rather than open a room
            # where a participant can read but never answer.
            raise ValueError(f"invitee's server {server} is not in the allowed servers")
        if user_id != bot_user_id and user_id not in invite:
            invite.append(user_id)

    initial_state: list[dict[str, Any]] = [
        {
            "type": "m.room.encryption",
            "state_key": "",
            "content": {
                "algorithm": MEGOLM,
                "rotation_period_ms": ROTATION_PERIOD_MS,
                "rotation_period_msgs": ROTATION_PERIOD_MSGS,
            },
        },
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
        # "invited": a participant reads from their invitation on, never before.
        # Someone added later could not decrypt older messages anyway (nio does not
        # share history keys), so "shared" would only show them the metadata of a
        # conversation they were not part of; the bot re-posts the dossier for them.
        {
            "type": "m.room.history_visibility",
            "state_key": "",
            "content": {"history_visibility": "invited"},
        },
        {
            "type": "m.room.server_acl",
            "state_key": "",
            "content": {"allow": allow, "deny": [], "allow_ip_literals": False},
        },
        # Lets the bot recognise its rooms after a restart; the link to the usager
        # stays in our database, never in clear state.
        {
            "type": DEMANDE_STATE_TYPE,
            "state_key": "",
            "content": {"reference": reference, "version": DEMANDE_STATE_VERSION},
        },
    ]
    return {
        "preset": "private_chat",
        "visibility": "private",
        "room_version": room_version,
        "name": name,
        "invite": invite,
        "is_direct": False,
        "initial_state": initial_state,
        "power_level_content_override": canonical_power_levels(bot_user_id, room_version),
    }
