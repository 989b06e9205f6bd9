"""Facts about Synapse 1.163 and matrix-nio 0.26 that the bot is built on, pinned.

Restarting a nio client without a full initial sync (test 4)
-------------------------------------------------------------
After `AsyncClient(...)` + `restore_login(user_id, device_id, token)` with
`AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True, pickle_key=...)`,
the vodozemac account, Olm sessions, known devices and `encrypted_rooms` come back
from the store, and `loaded_sync_token` is set, but `client.rooms` is empty, and an
incremental sync does not bring quiet rooms back. `room_send` to such a room raises
`LocalProtocolError("No such room ...")`. A `sync(full_state=True)` from the stored
token does bring every joined room back (Synapse 1.163), at the price of the full state
of all rooms. What is enough to send to one room, without any of that:

1. `room = nio.MatrixRoom(room_id, client.user_id, encrypted=True)` and
   `client.rooms[room_id] = room`. Leave `room.members_synced` False.
2. Invited-but-not-joined users must be added by hand, from the room state
   (`client.room_get_state(room_id)`, `m.room.member` with `membership: invite`):
   `room.add_member(user_id, None, None, invited=True)`. `joined_members` lists
   joined users only, and nio's `_handle_joined_members` keeps existing
   `invited=True` entries while dropping other non-joined ones.
3. `client.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True)`.
   Because `members_synced` is False it calls `joined_members(room_id)` itself
   (`_handle_joined_members` adds joined users, sets `members_synced = True` and calls
   `olm.update_tracked_users(room)`, which queues every member not yet tracked,
   and after a restart none are), then `keys_query()` if `should_query_keys`, then
   `share_group_session()` (claims one-time keys for devices without an Olm
   session via `get_missing_sessions`, then sends `m.room_key` to every device of
   `room.users`), then encrypts.

Key sharing covers invited users: `share_group_session` iterates over
`room.users`, which includes members with `invited=True` (added by sync from
`m.room.member` invite events, or by hand as in step 2), as long as their device
keys are known. But `room_send` only calls `keys_query` on its first send to a room
(while `members_synced` is False): the caller must run `keys_query()` whenever
`should_query_keys` is true after a sync (as `sync_forever` does and as
`tests.support.matrix.sync_once` does), or new members' devices are missed. A member
event also invalidates the outbound session, so the next send re-shares.

make_room_admin in a room v12 (test 3)
--------------------------------------
Synapse's `POST /_synapse/admin/v1/rooms/<room>/make_room_admin` with a server admin's
token (the server admin is not in the room) succeeds: it impersonates the local
creator, sends a power-levels event *as the creator* that gives the target level 100,
and invites the target as the creator (the room is invite-only). The target can then
join and act at level 100 (invite, kick others), but cannot kick the creator, who
keeps unlimited power and can kick the intruder. Only the creator's signature shows
in the room: the bot must watch power-levels and membership events it did not send.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import nio
import pytest

from bot.devserver import LocalSynapse
from tests.support.matrix import (
    SESSION_TIMINGS,
    TEST_PASSWORD,
    Clients,
    accept_invite,
    create_encrypted_room,
    has_joined,
    inbox,
    join_and_read,
    read_texts,
    send_text,
    sync_once,
    sync_until,
    texts,
    unique,
)

# -- the devserver's own data directory (no homeserver needed) ---------------------


def test_prepare_is_idempotent_and_keeps_secrets(tmp_path: Path) -> None:
    first = LocalSynapse(tmp_path)
    first.prepare()
    key = (tmp_path / "localhost.signing.key").read_text()
    secret = (tmp_path / "registration_shared_secret").read_text()
    config = (tmp_path / "homeserver.yaml").read_text()

    second = LocalSynapse(tmp_path, fast_hashing=True)
    second.prepare()

    assert (tmp_path / "localhost.signing.key").read_text() == key
    assert (tmp_path / "registration_shared_secret").read_text() == secret
    assert stat.S_IMODE(os.stat(tmp_path / "registration_shared_secret").st_mode) == 0o600
    assert second.base_url == first.base_url  # same URL for a second `aplus dev`
    assert "bcrypt_rounds: 4" not in config
    new_config = (tmp_path / "homeserver.yaml").read_text()
    assert "bcrypt_rounds: 4" in new_config
    assert secret not in new_config  # referenced by path, never inlined


def test_prepare_moves_to_a_free_port_when_the_old_one_is_taken(tmp_path: Path) -> None:
    server = LocalSynapse(tmp_path)
    server.prepare()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        again = LocalSynapse(tmp_path)
        again.prepare()
        assert again.port != server.port
    assert (tmp_path / "port").read_text().strip() == str(again.port)


# -- accounts ------------------------------------------------------------------------


async def test_register_twice_logs_in_and_keeps_tokens_out_of_repr(
    synapse: LocalSynapse,
) -> None:
    name = unique("twice")
    first = await synapse.register(name, TEST_PASSWORD, admin=True)
    second = await synapse.register(name, TEST_PASSWORD)

    assert first.user_id == second.user_id == f"@{name}:localhost"
    assert first.device_id != second.device_id
    assert first.access_token not in repr(first)
    whoami = await synapse.admin_request(
        "GET", "/_matrix/client/v3/account/whoami", second.access_token
    )
    assert whoami.body["user_id"] == first.user_id
    me = await synapse.admin_request(
        "GET", f"/_synapse/admin/v2/users/{first.user_id}", first.access_token
    )
    assert me.ok and me.body["admin"] is True


# -- (1) and (2): an encrypted, locked-down room ---------------------------------------


async def _state(client: nio.AsyncClient, room_id: str, event_type: str) -> dict[str, Any]:
    response = await client.room_get_state_event(room_id, event_type)
    assert isinstance(response, nio.RoomGetStateEventResponse), response
    content: dict[str, Any] = response.content
    return content


async def test_encrypted_locked_room_delivers_to_joined_and_invited_members(
    clients: Clients,
) -> None:
    alice = await clients.client("alice")
    bob = await clients.client("bob")
    carol = await clients.client("carol")
    assert bob.user_id and carol.user_id

    room_id = await create_encrypted_room(alice, [bob.user_id, carol.user_id])

    create = await _state(alice, room_id, "m.room.create")
    assert create["room_version"] == "12"
    levels = await _state(alice, room_id, "m.room.power_levels")
    assert alice.user_id not in levels["users"]  # v12: the creator is above levels
    assert (levels["state_default"], levels["invite"], levels["kick"], levels["ban"]) == (
        100,
        100,
        100,
        100,
    )

    await accept_invite(bob, room_id)
    await sync_until(alice, lambda: has_joined(alice, room_id, bob.user_id), what="Bob's join")
    assert alice.rooms[room_id].users[carol.user_id].invited  # Carol has not joined yet

    await send_text(alice, room_id, "Bonjour, votre demande est ouverte.")

    assert await read_texts(bob, room_id) == ["Bonjour, votre demande est ouverte."]
    # The key went to the invited Carol too: she decrypts a message sent before her join.
    assert await join_and_read(carol, room_id) == ["Bonjour, votre demande est ouverte."]


async def test_locked_room_refuses_member_invites_and_uninvited_joins(
    clients: Clients,
) -> None:
    alice = await clients.client("alice")
    bob = await clients.client("bob")
    carol = await clients.client("carol")
    assert bob.user_id and carol.user_id
    room_id = await create_encrypted_room(alice, [bob.user_id])
    await accept_invite(bob, room_id)

    invite = await bob.room_invite(room_id, carol.user_id)
    assert isinstance(invite, nio.RoomInviteError)
    assert invite.transport_response is not None
    assert invite.transport_response.status == 403

    join = await carol.join(room_id)
    assert isinstance(join, nio.JoinError)
    assert join.transport_response is not None
    assert join.transport_response.status == 403


# -- (3): the server admin's make_room_admin in a v12 room -----------------------------


async def test_make_room_admin_acts_as_the_creator_who_keeps_the_upper_hand(
    synapse: LocalSynapse, clients: Clients
) -> None:
    alice = await clients.client("alice")
    bob = await clients.client("bob")
    intruder = await clients.client("intruder")
    server_admin = await clients.user("srvadmin", admin=True)
    assert bob.user_id and intruder.user_id
    room_id = await create_encrypted_room(alice, [bob.user_id])
    await accept_invite(bob, room_id)

    made = await synapse.admin_request(
        "POST",
        f"/_synapse/admin/v1/rooms/{room_id}/make_room_admin",
        server_admin.access_token,
        json={"user_id": intruder.user_id},
    )
    assert made.status == 200, made.body

    state = await synapse.admin_request(
        "GET", f"/_synapse/admin/v1/rooms/{room_id}/state", server_admin.access_token
    )
    by_key = {(e["type"], e["state_key"]): e for e in state.body["state"]}
    levels = by_key[("m.room.power_levels", "")]
    assert levels["sender"] == alice.user_id  # sent in the creator's name
    assert levels["content"]["users"] == {intruder.user_id: 100}
    invite = by_key[("m.room.member", intruder.user_id)]
    assert (invite["sender"], invite["content"]["membership"]) == (alice.user_id, "invite")
    assert ("m.room.member", server_admin.user_id) not in by_key

    await accept_invite(intruder, room_id)
    kicked_bob = await intruder.room_kick(room_id, bob.user_id)
    assert isinstance(kicked_bob, nio.RoomKickResponse)  # level 100 is full power...
    kick_creator = await intruder.room_kick(room_id, alice.user_id)
    assert isinstance(kick_creator, nio.RoomKickError)  # ...except over the creator
    assert kick_creator.transport_response is not None
    assert kick_creator.transport_response.status == 403

    kicked = await alice.room_kick(room_id, intruder.user_id, reason="Accès non autorisé")
    assert isinstance(kicked, nio.RoomKickResponse)
    members = await alice.joined_members(room_id)
    assert isinstance(members, nio.JoinedMembersResponse)
    assert {m.user_id for m in members.members} == {alice.user_id}


# -- (4): sending after a restart without a full initial sync --------------------------


async def test_restarted_client_sends_to_a_rebuilt_room_without_initial_sync(
    clients: Clients,
) -> None:
    alice = await clients.client("alice")
    bob = await clients.client("bob")
    carol = await clients.client("carol")
    assert bob.user_id and carol.user_id
    room_id = await create_encrypted_room(alice, [bob.user_id])
    await accept_invite(bob, room_id)
    await sync_until(alice, lambda: has_joined(alice, room_id, bob.user_id), what="Bob's join")
    await send_text(alice, room_id, "avant")
    assert await read_texts(bob, room_id) == ["avant"]
    invited = await alice.room_invite(room_id, carol.user_id)
    assert isinstance(invited, nio.RoomInviteResponse)
    # Alice's stored sync token now lies after every event of the room: a quiet room.
    await sync_until(alice, lambda: carol.user_id in alice.rooms[room_id].users, what="invite")

    alice = await clients.reopen(alice)
    assert alice.loaded_sync_token and room_id in alice.encrypted_rooms
    assert alice.rooms == {}
    await sync_once(alice, timeout_ms=0)
    assert room_id not in alice.rooms  # a quiet room does not come back
    with pytest.raises(nio.LocalProtocolError, match="No such room"):
        await send_text(alice, room_id, "perdu")

    # The recipe: an empty encrypted room object, invited users from the state,
    # then room_send fetches joined members, queries keys and shares the session.
    room = nio.MatrixRoom(room_id, alice.user_id, encrypted=True)
    alice.rooms[room_id] = room
    state = await alice.room_get_state(room_id)
    assert isinstance(state, nio.RoomGetStateResponse)
    for event in state.events:
        if event["type"] == "m.room.member" and event["content"]["membership"] == "invite":
            room.add_member(event["state_key"], None, None, invited=True)
    assert not room.members_synced

    await send_text(alice, room_id, "après")

    assert room.members_synced
    assert set(room.users) == {alice.user_id, bob.user_id, carol.user_id}
    assert await read_texts(bob, room_id, count=2) == ["avant", "après"]
    # Carol was invited after "avant" (history_visibility: invited): she gets "après" only.
    assert await join_and_read(carol, room_id) == ["après"]


async def test_restart_facts_full_state_sync_and_forgotten_invitees(clients: Clients) -> None:
    alice = await clients.client("alice")
    bob = await clients.client("bob")
    carol = await clients.client("carol")
    assert bob.user_id and carol.user_id
    room_id = await create_encrypted_room(alice, [bob.user_id, carol.user_id])
    await accept_invite(bob, room_id)
    await sync_until(alice, lambda: has_joined(alice, room_id, bob.user_id), what="Bob's join")

    alice = await clients.reopen(alice)
    # Unlike an incremental sync, a full_state sync from the stored token brings every
    # joined room back (the full state of all of them: an initial sync's cost in state).
    await sync_once(alice, timeout_ms=0, full_state=True)
    assert room_id in alice.rooms

    # A rebuilt room without its invitees: joined_members ignores them, so they get no key.
    alice.rooms[room_id] = nio.MatrixRoom(room_id, alice.user_id, encrypted=True)
    await send_text(alice, room_id, "sans Carol")
    assert set(alice.rooms[room_id].users) == {alice.user_id, bob.user_id}
    assert await read_texts(bob, room_id) == ["sans Carol"]
    await accept_invite(carol, room_id)
    await sync_until(
        carol, lambda: bool(inbox(carol).undecryptable[room_id]), what="the undecryptable event"
    )
    assert texts(carol, room_id) == []


# -- (5): timings, printed with `pytest -s` --------------------------------------------


async def test_timings_of_the_basic_operations(synapse: LocalSynapse, clients: Clients) -> None:
    started = time.perf_counter()
    user = await synapse.register(unique("timed"), TEST_PASSWORD)
    register_s = time.perf_counter() - started

    started = time.perf_counter()
    client = await clients.client(user)
    client_s = time.perf_counter() - started

    other = await clients.user("timed-other")
    started = time.perf_counter()
    created = await client.room_create(
        invite=[other.user_id],
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    create_s = time.perf_counter() - started
    assert isinstance(created, nio.RoomCreateResponse)

    print(
        f"\nSynapse session fixture start: {SESSION_TIMINGS.get('synapse_start_s', 0):.2f} s"
        f"\nshared-secret register: {register_s * 1000:.0f} ms"
        f"\nE2EE client ready (keys upload + first sync): {client_s * 1000:.0f} ms"
        f"\ncreateRoom (encrypted, one invite): {create_s * 1000:.0f} ms"
    )
