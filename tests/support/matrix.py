# The waits take a `timeout` on purpose (ASYNC109): it bounds a polling loop and fails the
# test with what was awaited, where asyncio.timeout would give a bare TimeoutError.
# ruff: noqa: ASYNC109
"""Real Matrix clients for the integration tests: users, E2EE nio clients, syncing.

Every helper talks to the session's real Synapse (`bot.devserver.LocalSynapse`). Waiting
is bounded by a timeout that *fails* the test with a description of what was awaited;
no test asserts on durations.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import secrets
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nio

from bot.devserver import LocalSynapse, RegisteredUser
from bot.domain.key_sharing import Device
from bot.matrix.cross_signing import SEED_SECRET_NAME, CrossSigningSeeds, ensure_cross_signing
from bot.matrix.device_trust import devices_from_query

# Test accounts share one password: it is a fixture of a throwaway homeserver.
TEST_PASSWORD = "mot-de-passe-de-test"

# Filled by the session fixture; printed by the timing test (`pytest -s`).
SESSION_TIMINGS: dict[str, float] = {}

# Short long-polls: a sync returns as soon as something happens, and a wait loop
# re-checks its predicate at least this often.
SYNC_POLL_MS = 300

_counter = itertools.count(1)


class WaitTimeout(AssertionError):
    """A bounded wait ended without the awaited condition."""


def unique(prefix: str) -> str:
    """A Matrix localpart that no other test (or earlier run) uses."""
    return f"{prefix.lower()}-{next(_counter)}-{secrets.token_hex(3)}"


async def make_user(synapse: LocalSynapse, prefix: str, *, admin: bool = False) -> RegisteredUser:
    return await synapse.register(unique(prefix), TEST_PASSWORD, admin=admin)


# -- decrypted messages, collected per client ----------------------------------


class Inbox:
    """What a client has seen: decrypted texts, undecryptable events, withheld keys.

    Attached when the client is built, before its first sync: what arrives in that
    first sync (a key withheld from a brand-new device, say) is not missed.
    """

    def __init__(self, client: nio.AsyncClient) -> None:
        self.texts: dict[str, list[str]] = defaultdict(list)
        self.messages: dict[str, list[nio.RoomMessageText | nio.RoomMessageNotice]] = defaultdict(
            list
        )
        self.undecryptable: dict[str, list[nio.MegolmEvent]] = defaultdict(list)
        # `m.room_key.withheld` contents (nio only knows them as unknown to-device events).
        self.withheld: list[dict[str, Any]] = []
        client.add_event_callback(self._on_text, nio.RoomMessageText)
        client.add_event_callback(self._on_notice, nio.RoomMessageNotice)
        client.add_event_callback(self._on_megolm, nio.MegolmEvent)
        client.add_to_device_callback(self._on_to_device, nio.UnknownToDeviceEvent)

    def _on_text(self, room: nio.MatrixRoom, event: nio.RoomMessageText) -> None:
        self.texts[room.room_id].append(event.body)
        self.messages[room.room_id].append(event)

    def _on_notice(self, room: nio.MatrixRoom, event: nio.RoomMessageNotice) -> None:
        # Bots answer with m.notice; tests read those too.
        self.messages[room.room_id].append(event)

    def events(self, room_id: str) -> list[nio.RoomMessageText | nio.RoomMessageNotice]:
        return list(self.messages[room_id])

    def _on_megolm(self, room: nio.MatrixRoom, event: nio.MegolmEvent) -> None:
        # nio hands the callback a MegolmEvent only when it could not decrypt it.
        self.undecryptable[room.room_id].append(event)

    def _on_to_device(self, event: nio.UnknownToDeviceEvent) -> None:
        if event.type == "m.room_key.withheld":
            self.withheld.append(event.source["content"])


_inboxes: weakref.WeakKeyDictionary[nio.AsyncClient, Inbox] = weakref.WeakKeyDictionary()


def inbox(client: nio.AsyncClient) -> Inbox:
    """The client's inbox (attached when the client is built, before its first sync)."""
    if client not in _inboxes:
        _inboxes[client] = Inbox(client)
    return _inboxes[client]


def texts(client: nio.AsyncClient, room_id: str) -> list[str]:
    return list(inbox(client).texts[room_id])


# -- clients ---------------------------------------------------------------------


def _client_config(pickle_key: str) -> nio.AsyncClientConfig:
    return nio.AsyncClientConfig(
        encryption_enabled=True,
        store_sync_tokens=True,
        pickle_key=pickle_key,
    )


def _store_path(store_dir: Path) -> str:
    store_dir.mkdir(parents=True, exist_ok=True)
    return str(store_dir)


async def restore_client(
    synapse: LocalSynapse,
    user_id: str,
    device_id: str,
    access_token: str,
    store_dir: Path,
    *,
    pickle_key: str | None = None,
) -> nio.AsyncClient:
    """A nio client on an existing device and store; keys uploaded if needed, no sync."""
    config = _client_config(pickle_key or secrets.token_hex(16))
    client = nio.AsyncClient(
        synapse.base_url,
        user_id,
        device_id=device_id,
        store_path=_store_path(store_dir),
        config=config,
    )
    inbox(client)
    client.restore_login(user_id, device_id, access_token)  # loads the vodozemac store
    if client.should_upload_keys:
        await _ok(client.keys_upload(), "keys_upload")
    return client


class MemorySecretStore:
    """The cross-signing `SecretStore` seam, in memory; counts writes."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.writes = 0

    async def get_secret(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def set_secret(self, key: str, value: bytes) -> None:
        self.values[key] = value
        self.writes += 1


# Each test user's cross-signing keys, so that a second device of the user can be signed.
_IDENTITIES: dict[str, MemorySecretStore] = {}


async def cross_sign(client: nio.AsyncClient) -> None:
    """Sign the client's device with its user's cross-signing keys (created on first use),
    as Element does for every device its owner logs in: Element and the bot share room
    keys only with such devices."""
    assert client.user_id
    secrets_ = _IDENTITIES.setdefault(client.user_id, MemorySecretStore())
    await ensure_cross_signing(client, secrets_, password=TEST_PASSWORD)


async def reset_identity(client: nio.AsyncClient) -> None:
    """Replace the user's cross-signing identity (new master key, uploaded with the
    password through user-interactive auth) and sign `client`'s device with it: what a
    user does in Element after losing the recovery key, and what whoever holds their
    password could do."""
    # The bot's own code refuses to replace an identity; its building blocks do not.
    from bot.matrix import cross_signing as cs

    user_id, device_id, ed25519 = cs._identity(client)
    server = cs._Homeserver(client)
    seeds = CrossSigningSeeds.generate()
    await cs._upload_keys(server, user_id, seeds, TEST_PASSWORD)
    device = cs._check_device_is_ours(
        await cs._own_device(client, server, user_id, device_id), device_id, ed25519
    )
    await cs._sign_device(server, user_id, device, seeds)
    _IDENTITIES.setdefault(user_id, MemorySecretStore()).values[SEED_SECRET_NAME] = seeds.to_bytes()


async def published_devices(client: nio.AsyncClient, user_id: str) -> list[Device]:
    """`user_id`'s devices as the homeserver publishes them, each with its cross-signing."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            client.homeserver.rstrip("/") + "/_matrix/client/v3/keys/query",
            json={"device_keys": {user_id: []}},
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return devices_from_query(await response.json(), user_id)


async def make_client(
    synapse: LocalSynapse,
    prefix_or_user: str | RegisteredUser,
    store_dir: Path,
    *,
    cross_signed: bool = True,
) -> nio.AsyncClient:
    """A logged-in E2EE client (new user unless one is given), keys uploaded, first sync done.

    The client uses the device that registration (or login) created; its pickle key is
    `client.config.pickle_key`, needed to reopen the same store with `restore_client`.
    With `cross_signed` (the default, as with Element) its owner cross-signs the device.
    """
    if isinstance(prefix_or_user, RegisteredUser):
        user = prefix_or_user
    else:
        user = await make_user(synapse, prefix_or_user)
    client = await restore_client(
        synapse, user.user_id, user.device_id, user.access_token, store_dir
    )
    if cross_signed:
        await cross_sign(client)
    await sync_once(client, timeout_ms=0, full_state=True)
    return client


async def close_client(client: nio.AsyncClient) -> None:
    await client.close()
    if client.store is not None:
        client.store.database.close()


async def close_clients(*clients: nio.AsyncClient) -> None:
    for client in clients:
        await close_client(client)


class Clients:
    """Creates users and E2EE clients for one test; closes every client afterwards."""

    def __init__(self, synapse: LocalSynapse, root: Path) -> None:
        self.synapse = synapse
        self._root = root
        self._open: list[nio.AsyncClient] = []

    def store_dir(self, user_id: str, device_id: str | None = None) -> Path:
        base = self._root / user_id.lstrip("@").replace(":", "_")
        return base / device_id if device_id else base

    async def user(self, prefix: str, *, admin: bool = False) -> RegisteredUser:
        return await make_user(self.synapse, prefix, admin=admin)

    async def client(
        self, prefix_or_user: str | RegisteredUser, *, cross_signed: bool = True
    ) -> nio.AsyncClient:
        if isinstance(prefix_or_user, str):
            prefix_or_user = await self.user(prefix_or_user)
        client = await make_client(
            self.synapse,
            prefix_or_user,
            self.store_dir(prefix_or_user.user_id),
            cross_signed=cross_signed,
        )
        self._open.append(client)
        return client

    async def new_device(self, user_id: str, *, cross_signed: bool = True) -> nio.AsyncClient:
        """A new login of an existing user: a second device, with its own store."""
        localpart = user_id[1:].split(":", 1)[0]
        login = await self.synapse.login(localpart, TEST_PASSWORD)
        client = await make_client(
            self.synapse,
            login,
            self.store_dir(user_id, login.device_id),
            cross_signed=cross_signed,
        )
        self._open.append(client)
        return client

    async def reopen(self, client: nio.AsyncClient) -> nio.AsyncClient:
        """Close `client` and reopen its device from its store, as a restarted bot would.

        No sync is done: the new client has the stored sync token and no rooms.
        """
        assert client.user_id and client.device_id and client.access_token
        await self.close(client)
        reopened = await restore_client(
            self.synapse,
            client.user_id,
            client.device_id,
            client.access_token,
            self.store_dir(client.user_id),
            pickle_key=client.config.pickle_key,
        )
        self._open.append(reopened)
        return reopened

    async def close(self, client: nio.AsyncClient) -> None:
        if client in self._open:
            self._open.remove(client)
        await close_client(client)

    async def aclose(self) -> None:
        while self._open:
            await close_client(self._open.pop())


# -- syncing and waiting --------------------------------------------------------


async def _ok(call: Awaitable[Any], what: str) -> Any:
    response = await call
    if isinstance(response, nio.ErrorResponse):
        raise AssertionError(f"{what} failed: {response}")
    return response


async def sync_once(
    client: nio.AsyncClient, *, timeout_ms: int = SYNC_POLL_MS, full_state: bool = False
) -> nio.SyncResponse:
    """One sync plus the E2EE housekeeping that `sync_forever` would do after it."""
    response = await _ok(
        client.sync(timeout=timeout_ms, full_state=full_state or None), f"{client.user_id} sync"
    )
    if client.should_upload_keys:
        await _ok(client.keys_upload(), "keys_upload")
    if client.should_query_keys:
        await _ok(client.keys_query(), "keys_query")
    if client.should_claim_keys:
        await _ok(client.keys_claim(client.get_users_for_key_claiming()), "keys_claim")
    await client.send_to_device_messages()
    assert isinstance(response, nio.SyncResponse)
    return response


async def sync_until(
    client: nio.AsyncClient,
    predicate: Callable[[], bool],
    timeout: float = 30,
    what: str | None = None,
) -> None:
    """Sync (short long-polls) until `predicate()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            description = what or getattr(predicate, "__name__", repr(predicate))
            raise WaitTimeout(
                f"{client.user_id}: still waiting after {timeout} s for {description}"
            )
        await sync_once(client, timeout_ms=max(0, min(SYNC_POLL_MS, int(remaining * 1000))))


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10,
    what: str | None = None,
    interval: float = 0.05,
) -> None:
    """Poll a plain or async predicate until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            description = what or getattr(predicate, "__name__", repr(predicate))
            raise WaitTimeout(f"still waiting after {timeout} s for {description}")
        await asyncio.sleep(interval)


def has_joined(client: nio.AsyncClient, room_id: str, user_id: str) -> bool:
    """Whether `client`'s view of the room has `user_id` as a joined member."""
    room = client.rooms.get(room_id)
    return room is not None and user_id in room.users and not room.users[user_id].invited


async def accept_invite(client: nio.AsyncClient, room_id: str, timeout: float = 30) -> None:
    """Wait for the invite to reach the client, join, and sync the room in."""
    await sync_until(
        client,
        lambda: room_id in client.invited_rooms or room_id in client.rooms,
        timeout,
        f"an invite to {room_id}",
    )
    if room_id not in client.rooms:
        await _ok(client.join(room_id), f"{client.user_id} join {room_id}")
    await sync_until(client, lambda: room_id in client.rooms, timeout, f"joined {room_id}")


async def join_and_read(
    client: nio.AsyncClient, room_id: str, count: int = 1, timeout: float = 30
) -> list[str]:
    """Join (accepting the invite if needed) and return the first `count` decrypted texts."""
    await accept_invite(client, room_id, timeout)
    return await read_texts(client, room_id, count, timeout)


async def join_and_find(
    client: nio.AsyncClient, room_id: str, needle: str, timeout: float = 30
) -> str:
    """Join (accepting the invite if needed) and return the first decrypted text that
    holds `needle`, whatever was posted before it (notices come in any order).

    Other members' messages may be undecryptable for a newcomer (their clients had not
    seen the invite yet): only an undecryptable event of the bot's (the `needle`'s
    author in these tests) would be worth failing early, so the wait just goes on and
    the timeout names what could not be decrypted."""
    await accept_invite(client, room_id, timeout)
    box = inbox(client)

    def found() -> bool:
        return any(needle in t for t in box.texts[room_id])

    try:
        await sync_until(client, found, timeout, f"a decrypted message with {needle!r}")
    except WaitTimeout as exc:
        missing = [(e.sender, e.session_id) for e in box.undecryptable[room_id]]
        raise WaitTimeout(f"{exc} in {room_id}; undecryptable: {missing}") from exc
    return next(t for t in texts(client, room_id) if needle in t)


def _fail_on_undecryptable(client: nio.AsyncClient, room_id: str) -> None:
    box = inbox(client)
    if box.undecryptable[room_id]:
        event = box.undecryptable[room_id][0]
        raise AssertionError(
            f"{client.user_id} cannot decrypt {event.event_id} in {room_id} "
            f"(session {event.session_id} from {event.sender}/{event.device_id})"
        )


async def read_texts(
    client: nio.AsyncClient, room_id: str, count: int = 1, timeout: float = 30
) -> list[str]:
    """Sync until the client has decrypted `count` texts in the room; return them all.

    Fails early, with the reason, if an event of the room cannot be decrypted.
    """
    box = inbox(client)

    def enough() -> bool:
        _fail_on_undecryptable(client, room_id)
        return len(box.texts[room_id]) >= count

    await sync_until(client, enough, timeout, f"{count} decrypted message(s) in {room_id}")
    return texts(client, room_id)


# -- rooms ----------------------------------------------------------------------


def locked_power_levels(users: dict[str, int] | None = None) -> dict[str, Any]:
    """Power levels where only level 100 changes state, invites, kicks or bans.

    Room v12: the creator has unlimited power and must NOT appear in `users`.
    """
    return {
        "users": dict(users or {}),
        "users_default": 0,
        "events_default": 0,
        "state_default": 100,
        "invite": 100,
        "kick": 100,
        "ban": 100,
        "redact": 100,
        "events": {},
    }


async def create_encrypted_room(
    client: nio.AsyncClient,
    invite: Sequence[str] = (),
    *,
    name: str | None = None,
    power_users: dict[str, int] | None = None,
) -> str:
    """A private, encrypted, locked-down room; synced into `client.rooms` before returning."""
    response = await _ok(
        client.room_create(
            name=name,
            preset=nio.RoomPreset.private_chat,
            invite=list(invite),
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                },
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "invited"},
                },
            ],
            power_level_override=locked_power_levels(power_users),
        ),
        f"{client.user_id} createRoom",
    )
    room_id: str = response.room_id
    await sync_until(client, lambda: room_id in client.rooms, what=f"own room {room_id}")
    return room_id


async def send_text(client: nio.AsyncClient, room_id: str, body: str) -> str:
    """Send an encrypted text (unverified devices included, as the bot does)."""
    response = await _ok(
        client.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True,
        ),
        f"{client.user_id} send to {room_id}",
    )
    event_id: str = response.event_id
    return event_id
