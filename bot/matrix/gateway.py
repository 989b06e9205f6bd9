"""The nio adapter: one device for life, our own sync position, exactly-once sends.

Everything that talks to the homeserver goes through this class, so that nio's
error *responses* become exceptions in one place and the rest of the bot never
touches nio's internals.

Why not nio's `room_send`: it shares the room key with every device of every
member nio believes is in the room. We share it only with the members the
ledger authorises (``recipients``), so an intruder who slipped in between two
syncs never gets a key, whatever nio's view of the room says.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    KeysClaimError,
    KeysQueryError,
    KeysQueryResponse,
    LoginResponse,
    MegolmEvent,
    RoomMemberEvent,
    SyncResponse,
)
from nio.events import Event
from nio.exceptions import EncryptionError
from nio.rooms import MatrixRoom

from bot.domain.lease import always_held, require_held
from bot.matrix import attachments as files
from bot.matrix.device_trust import DeviceTrust, IdentityCheck
from bot.matrix.errors import (
    GUARD_REASON_FIELD,
    HomeserverUnavailable,
    MatrixError,
    MediaUnavailable,
)
from bot.matrix.room_keys import (
    KeyArchive,
    RoomKeySharer,
    UnverifiedFn,
    accept_forwards_from_session_owner,
)

log = logging.getLogger(__name__)

# The bot does not need presence, typing, receipts or account data: keep syncs small.
SYNC_FILTER: dict[str, Any] = {
    "presence": {"types": []},
    "account_data": {"types": []},
    "room": {
        "ephemeral": {"types": []},
        "account_data": {"types": []},
        "timeline": {"limit": 100},
        "state": {"lazy_load_members": False},
    },
}


# Events per page when filling a gap left by a limited sync timeline.
GAP_PAGE = 100

# Demande rooms kept in memory (nio's view: members, name, power levels, ~3 KB each; the
# room's outbound Megolm session): the most recently active ones. Any other is rebuilt
# from the homeserver when it is needed (`refresh_members`, one `GET /members`) and gets a
# new session at its next message, exactly as after a restart, so that the bot's memory
# does not grow with the ~100,000 rooms it is a member of (tests/bench/
# test_bench_rooms.py). Trust never depended on nio's view: the key plan compares the
# session's recipients with a fresh member list.
ROOM_CACHE = 2000


@dataclass(frozen=True, slots=True)
class SavedLogin:
    user_id: str
    device_id: str
    access_token: str


class MatrixGateway:
    def __init__(
        self,
        *,
        homeserver: str,
        user_id: str,
        device_name: str,
        store_dir: Path,
        pickle_key: str,
        request_timeout: float = 60.0,
        require_cross_signed_devices: bool = True,
        max_attachment_bytes: int = 10 * 1024 * 1024,
        key_archive: KeyArchive | None = None,
        identity_pins: IdentityCheck | None = None,
        on_unverified: UnverifiedFn | None = None,
        held: Callable[[], bool] = always_held,
        room_cache: int | None = ROOM_CACHE,
        forgettable: Callable[[str], bool] = lambda _room_id: False,
    ) -> None:
        self.homeserver = homeserver.rstrip("/")
        # Two processes, one active (bot.services.lease): nothing that changes anything
        # on the homeserver leaves a process that is not (or no longer) the active one.
        self._held = held
        self.user_id = user_id
        self.device_name = device_name
        self.store_dir = store_dir
        store_dir.mkdir(parents=True, exist_ok=True)
        config = AsyncClientConfig(
            encryption_enabled=True,
            # Our own record of the sync position is saved *after* handling, see sync loop.
            store_sync_tokens=False,
            pickle_key=pickle_key,
            max_timeouts=2,
            max_limit_exceeded=5,
            request_timeout=request_timeout,
        )
        self.client = AsyncClient(
            self.homeserver, user_id, store_path=str(store_dir), config=config
        )
        self.max_attachment_bytes = max_attachment_bytes
        self._http: aiohttp.ClientSession | None = None
        self._room_locks: dict[str, asyncio.Lock] = {}
        # The forgettable rooms in nio's memory (demande rooms: `App` gives the index's
        # membership test), least recently active first, and how many to keep (None: all).
        self.room_cache = room_cache
        self.forgettable = forgettable
        self._recent: OrderedDict[str, None] = OrderedDict()
        # Who gets room keys: our own check of cross-signing, then the domain's decision.
        self.device_trust = DeviceTrust(
            self._raw_keys_query, on_response=self._feed_nio_keys, pins=identity_pins
        )
        self.room_keys = RoomKeySharer(
            self.client,
            self.request,
            self._claim_keys,
            self.device_trust,
            require_cross_signed=require_cross_signed_devices,
            archive=key_archive,
            on_unverified=on_unverified,
        )
        # Users whose devices or membership changed: their new devices may need the
        # bot's earlier room keys (see `RoomKeySharer.catch_up`), after the batch.
        self._catch_up: set[str] = set()

    # ------------------------------------------------------------------ session
    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    async def connect(
        self,
        *,
        saved: SavedLogin | None,
        password: str | None,
        access_token: str | None = None,
    ) -> SavedLogin:
        """Restore the device we already have, or log in once and keep it for life.

        With a configured access token (and no stored login) the bot adopts the
        token's device instead of creating one.
        """
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90))
        if saved is None and access_token is not None:
            self.client.access_token = access_token
            who = await self.request("GET", "/_matrix/client/v3/account/whoami")
            device = who.get("device_id")
            if who.get("user_id") != self.user_id or not isinstance(device, str):
                raise MatrixError(None, None, "the configured access token is not the bot's")
            saved = SavedLogin(self.user_id, device, access_token)
        if saved is not None:
            self.client.restore_login(saved.user_id, saved.device_id, saved.access_token)
            try:
                await self.request("GET", "/_matrix/client/v3/account/whoami")
                await self._upload_keys_if_needed()
                accept_forwards_from_session_owner(self.client)
                return saved
            except MatrixError as exc:
                if exc.status != 401 or password is None:
                    raise
                log.warning("stored access token refused; logging in again on the same device")
                # Same device ID: the crypto store and its keys stay valid.
        if password is None:
            raise MatrixError(None, None, "no stored login and no bot password configured")
        try:
            resp = await self.client.login(password=password, device_name=self.device_name)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HomeserverUnavailable(f"login: {exc}") from exc
        if not isinstance(resp, LoginResponse):
            raise _as_error(resp)
        await self._upload_keys_if_needed()
        accept_forwards_from_session_owner(self.client)
        return SavedLogin(resp.user_id, resp.device_id, resp.access_token)

    async def _upload_keys_if_needed(self) -> None:
        if self.client.should_upload_keys:
            require_held(self._held(), "keys upload")
            try:
                resp = await self.client.keys_upload()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise HomeserverUnavailable(f"keys upload: {exc}") from exc
            if isinstance(resp, ErrorResponse):
                raise _as_error(resp)

    async def close(self) -> None:
        await self.client.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --------------------------------------------------------------------- sync
    async def sync(self, *, since: str | None, timeout_ms: int) -> SyncResponse:
        # nio skips a response whose token it saw already; a retry of the same batch
        # after a failure must be decrypted and handled again.
        require_held(self._held(), "sync")
        self.client.next_batch = since
        try:
            resp = await self.client.sync(
                timeout=timeout_ms, sync_filter=SYNC_FILTER, since=since, full_state=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HomeserverUnavailable(str(exc)) from exc
        if not isinstance(resp, SyncResponse):
            raise _as_error(resp)
        self._note_device_changes(resp)
        for room_id in resp.rooms.join:
            self._touch(room_id)
        self.forget_idle_rooms()
        return resp

    def _touch(self, room_id: str) -> None:
        if self.forgettable(room_id):
            self._recent[room_id] = None
            self._recent.move_to_end(room_id)

    def forget_idle_rooms(self, keep: int | None = None) -> int:
        """Drop nio's view of the least recently active forgettable rooms beyond `keep`
        (default `room_cache`) of them; how many were dropped. A room with a send in
        progress (its lock held) stays."""
        limit = self.room_cache if keep is None else keep
        if limit is None or len(self._recent) <= limit:
            return 0
        dropped = 0
        for room_id in list(islice(self._recent, len(self._recent) - limit)):
            lock = self._room_locks.get(room_id)
            if lock is not None and lock.locked():
                continue
            del self._recent[room_id]
            self.client.rooms.pop(room_id, None)
            self._room_locks.pop(room_id, None)
            self.room_keys.forget(room_id)
            dropped += 1
        return dropped

    def _note_device_changes(self, resp: SyncResponse) -> None:
        """Forget what we know of the devices of users whose devices or membership changed."""
        changed = set(resp.device_list.changed) | set(resp.device_list.left)
        arrived: set[str] = set()
        for info in resp.rooms.join.values():
            for event in [*info.state, *info.timeline.events]:
                if isinstance(event, RoomMemberEvent):
                    changed.add(event.state_key)
                    if event.membership in ("join", "invite"):
                        arrived.add(event.state_key)
        self.device_trust.invalidate(changed - {self.user_id})
        self._catch_up |= (set(resp.device_list.changed) | arrived) - {self.user_id}

    async def after_sync(self) -> None:
        """The crypto housekeeping nio's sync_forever would do."""
        c = self.client
        require_held(self._held(), "to-device messages")
        try:
            await c.send_to_device_messages()
            await self._upload_keys_if_needed()
            if c.should_query_keys:
                await c.keys_query()
            if c.should_claim_keys:
                await c.keys_claim(c.get_users_for_key_claiming())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HomeserverUnavailable(str(exc)) from exc
        await self.catch_up_room_keys()

    async def catch_up_room_keys(self, users: Collection[str] | None = None) -> None:
        """Earlier room keys to the new devices of users whose devices or rooms changed.

        Kept for the next batch if the homeserver fails meanwhile (nothing is lost).
        """
        pending = set(users) if users is not None else self._catch_up
        if users is None:
            self._catch_up = set()
        if not pending:
            return
        try:
            await self.room_keys.catch_up(pending, self._present)
        except MatrixError as exc:
            if not exc.transient:
                log.warning("room keys catch-up refused by the homeserver: %s", exc)
                return
            self._catch_up |= pending
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._catch_up |= pending
            raise HomeserverUnavailable(f"room keys catch-up: {exc}") from exc
        except Exception:
            # Database unavailable (or a bug): tried again after the next batch, and the
            # sync loop is not held back for it.
            self._catch_up |= pending
            log.exception("room keys catch-up failed; tried again after the next sync")

    async def _present(self, room_id: str) -> set[str]:
        """Joined or invited members of a room (the bot's view, rebuilt if unknown)."""
        async with self._lock(room_id):
            present = self.present_members(room_id)
            if present is None:
                present = set((await self.refresh_members(room_id)).users)
            return present

    # -------------------------------------------------------------- raw requests
    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        assert self._http is not None, "connect() first"
        if method != "GET":
            require_held(self._held(), f"{method} request")
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        try:
            async with self._http.request(
                method,
                self.homeserver + path,
                json=body if body is not None else ({} if method in ("POST", "PUT") else None),
                params=query,
                headers=headers,
            ) as resp:
                try:
                    data = await resp.json(content_type=None)
                except (json.JSONDecodeError, aiohttp.ContentTypeError):
                    data = {}
                if resp.status >= 400:
                    data = data if isinstance(data, dict) else {}
                    reason = data.get(GUARD_REASON_FIELD)
                    raise MatrixError(
                        resp.status,
                        data.get("errcode"),
                        str(data.get("error", resp.reason)),
                        guard_reason=reason if isinstance(reason, str) else None,
                    )
                return data if isinstance(data, dict) else {"value": data}
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise HomeserverUnavailable(f"{method} {path}: {exc}") from exc

    @staticmethod
    def _room(room_id: str) -> str:
        return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}"

    async def create_room(self, body: Mapping[str, Any]) -> str:
        data = await self.request("POST", "/_matrix/client/v3/createRoom", body)
        return str(data["room_id"])

    async def joined_rooms(self) -> list[str]:
        data = await self.request("GET", "/_matrix/client/v3/joined_rooms")
        return [str(r) for r in data.get("joined_rooms", [])]

    async def invite(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        """Invite, never in the middle of a send to the room: a message encrypted before
        the invitation but delivered after it would be shown to the newcomer (history
        « invited ») without its key. Once invited, they are in our view of the room."""
        body: dict[str, Any] = {"user_id": user_id}
        if reason:
            body["reason"] = reason
        async with self._lock(room_id):
            await self.request("POST", self._room(room_id) + "/invite", body)
            self.note_invited(room_id, user_id)

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        await self.request(
            "POST", self._room(room_id) + "/kick", {"user_id": user_id, "reason": reason}
        )
        self._forget_member(room_id, user_id)

    async def ban(self, room_id: str, user_id: str, reason: str) -> None:
        await self.request(
            "POST", self._room(room_id) + "/ban", {"user_id": user_id, "reason": reason}
        )
        self._forget_member(room_id, user_id)

    async def join(self, room_id: str) -> None:
        await self.request("POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}", {})

    async def leave(self, room_id: str, reason: str | None = None) -> None:
        await self.request(
            "POST", self._room(room_id) + "/leave", {"reason": reason} if reason else {}
        )

    async def members(self, room_id: str) -> dict[str, str]:
        """user_id → membership, straight from the homeserver."""
        data = await self.request("GET", self._room(room_id) + "/members")
        out: dict[str, str] = {}
        for ev in data.get("chunk", []):
            key = ev.get("state_key")
            membership = (ev.get("content") or {}).get("membership")
            if isinstance(key, str) and isinstance(membership, str):
                out[key] = membership
        return out

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        try:
            return await self.request(
                "GET",
                self._room(room_id)
                + f"/state/{quote(event_type, safe='')}/{quote(state_key, safe='')}",
            )
        except MatrixError as exc:
            if exc.status == 404:
                return None
            raise

    async def room_state(self, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        """The room's whole current state in one request: (type, state_key) → content."""
        data = await self.request("GET", self._room(room_id) + "/state")
        events = data.get("value", [])
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for ev in events if isinstance(events, list) else []:
            if isinstance(ev, dict) and isinstance(ev.get("content"), dict):
                out[(str(ev.get("type")), str(ev.get("state_key", "")))] = ev["content"]
        return out

    async def put_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> str:
        data = await self.request(
            "PUT",
            self._room(room_id)
            + f"/state/{quote(event_type, safe='')}/{quote(state_key, safe='')}",
            content,
        )
        return str(data.get("event_id", ""))

    async def send_plain(
        self,
        room_id: str,
        content: Mapping[str, Any],
        txn_id: str,
        event_type: str = "m.room.message",
    ) -> str:
        data = await self.request(
            "PUT",
            self._room(room_id) + f"/send/{quote(event_type, safe='')}/{quote(txn_id, safe='')}",
            content,
        )
        return str(data["event_id"])

    # --------------------------------------------------------- encrypted sending
    def is_encrypted(self, room_id: str) -> bool:
        room = self.client.rooms.get(room_id)
        return bool(room and room.encrypted) or room_id in self.client.encrypted_rooms

    def track_new_room(self, room_id: str, *, invited: Collection[str]) -> None:
        """Register a room we just created, so that we can send into it before any sync."""
        room = MatrixRoom(room_id, self.user_id, encrypted=True)
        room.add_member(self.user_id, None, None)
        for user in invited:
            room.add_member(user, None, None, invited=True)
        room.members_synced = True
        self.client.rooms[room_id] = room
        self.client.encrypted_rooms.add(room_id)
        self._touch(room_id)

    def _forget_member(self, room_id: str, user_id: str) -> None:
        room = self.client.rooms.get(room_id)
        if room is not None and room.remove_member(user_id):
            self.client.invalidate_outbound_session(room_id)

    async def refresh_members(self, room_id: str) -> MatrixRoom:
        """Rebuild our view of a room from the homeserver (after a restart, rooms are unknown)."""
        members = await self.members(room_id)
        room = self.client.rooms.get(room_id)
        if room is None:
            room = MatrixRoom(room_id, self.user_id, encrypted=True)
            self.client.rooms[room_id] = room
        room.encrypted = True
        self.client.encrypted_rooms.add(room_id)
        for user in list(room.users):
            if members.get(user) not in ("join", "invite"):
                room.remove_member(user)
        for user, membership in members.items():
            if membership in ("join", "invite") and user not in room.users:
                room.add_member(user, None, None, invited=membership == "invite")
        room.members_synced = True
        self._touch(room_id)
        return room

    def note_invited(self, room_id: str, user_id: str) -> None:
        """We invited `user_id`: count them in our view of the room, so that the next
        message's key reaches them, and rotate the room's outbound session."""
        room = self.client.rooms.get(room_id)
        if room is not None and user_id not in room.users:
            room.add_member(user_id, None, None, invited=True)
            self.client.invalidate_outbound_session(room_id)

    def member_count(self, room_id: str) -> int | None:
        """How many members (joined or invited) our view of the room has; None if unknown."""
        room = self.client.rooms.get(room_id)
        return None if room is None else len(room.users)

    def present_members(self, room_id: str) -> set[str] | None:
        room = self.client.rooms.get(room_id)
        if room is None or not room.members_synced:
            return None
        return set(room.users)

    def _lock(self, room_id: str) -> asyncio.Lock:
        return self._room_locks.setdefault(room_id, asyncio.Lock())

    async def send_encrypted(
        self,
        room_id: str,
        content: Mapping[str, Any],
        txn_id: str,
        *,
        recipients: Collection[str],
        event_type: str = "m.room.message",
    ) -> str:
        """Encrypt for the authorised recipients present in the room and send, idempotently.

        ``txn_id`` is stable for a given message: a retry after a crash or a network
        error gives back the same event instead of a duplicate.
        """
        async with self._lock(room_id):
            await self._share_locked(room_id, recipients)
            try:
                _, encrypted = self.client.encrypt(room_id, event_type, dict(content))
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise HomeserverUnavailable(str(exc)) from exc
            # Still under the room's lock: an invitation waits until this message is in
            # the room, so that it is before the newcomer's invite or shared with them.
            return await self.send_plain(room_id, encrypted, txn_id, event_type="m.room.encrypted")

    async def share_room_key(self, room_id: str, recipients: Collection[str]) -> None:
        """What `send_encrypted` does before it encrypts: the room's current key to the
        authorised recipients' devices. Done ahead (while the caller does something else),
        the next `send_encrypted` finds nothing left to share."""
        async with self._lock(room_id):
            await self._share_locked(room_id, recipients)

    async def _share_locked(self, room_id: str, recipients: Collection[str]) -> None:
        room = self.client.rooms.get(room_id)
        if room is None or not room.members_synced:
            room = await self.refresh_members(room_id)
        olm = self.client.olm
        assert olm is not None
        olm.update_tracked_users(room)
        try:
            if self.client.should_query_keys:
                q = await self.client.keys_query()
                if isinstance(q, KeysQueryError):
                    raise _as_error(q)
            await self.room_keys.share(room_id, recipients, set(room.users))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HomeserverUnavailable(str(exc)) from exc

    # ---------------------------------------------------------- attachments
    async def fetch_attachment(
        self, content: Mapping[str, Any], *, max_bytes: int | None = None
    ) -> tuple[str, str, bytes]:
        """(filename, mimetype, plaintext) of an encrypted attachment's message content.

        Raises `AttachmentTooLarge` past `max_bytes` (default `max_attachment_bytes`),
        declared or actual, and `AttachmentError` when it is not encrypted, malformed or
        does not decrypt.
        """
        ref = files.parse_encrypted_file(content)
        limit = self.max_attachment_bytes if max_bytes is None else max_bytes
        if ref.declared_size is not None and ref.declared_size > limit:
            raise files.AttachmentTooLarge(ref.declared_size, limit)
        server, media_id = ref.server_and_media_id
        media = f"{quote(server, safe='')}/{quote(media_id, safe='')}"
        path = f"/_matrix/client/v1/media/download/{media}"
        assert self._http is not None, "connect() first"
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        try:
            async with self._http.get(self.homeserver + path, headers=headers) as resp:
                if resp.status >= 400:
                    raise MediaUnavailable(resp.status, None, f"media download: {resp.reason}")
                data = bytearray()
                # AES-CTR keeps the size: the ciphertext is bounded by the same limit.
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > limit:
                        raise files.AttachmentTooLarge(None, limit)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise HomeserverUnavailable(f"media download: {exc}") from exc
        return ref.filename, ref.mimetype, files.decrypt(ref, bytes(data))

    async def send_attachment(
        self,
        room_id: str,
        filename: str,
        mimetype: str,
        data: bytes,
        txn_id: str,
        recipients: Collection[str],
    ) -> str:
        """Encrypt, upload and send a file to the room's authorised members; the event ID.

        The send is idempotent on ``txn_id`` (a retry may upload the ciphertext again,
        never post the message twice).
        """
        if len(data) > self.max_attachment_bytes:
            raise files.AttachmentTooLarge(len(data), self.max_attachment_bytes)
        file = await self.upload_attachment(data, filename)
        content = files.file_content(file, filename=filename, mimetype=mimetype, size=len(data))
        return await self.send_encrypted(room_id, content, txn_id, recipients=recipients)

    async def upload_attachment(self, data: bytes, filename: str) -> dict[str, Any]:
        """Encrypt and upload, without sending: the `EncryptedFile` (url, key, iv, hashes, v).

        For callers that post the message later, through the outbox (exactly once), or
        that have their own size limit (inbound email, admin exports): no limit here.
        """
        ciphertext, keys = files.encrypt(data)
        url = await self._upload(ciphertext, filename)
        return {"url": url, **keys}

    async def _upload(self, ciphertext: bytes, filename: str) -> str:
        assert self._http is not None, "connect() first"
        require_held(self._held(), "media upload")
        headers = {
            "Authorization": f"Bearer {self.client.access_token}",
            # The homeserver stores ciphertext: never tell it what the file really is.
            "Content-Type": "application/octet-stream",
        }
        try:
            async with self._http.post(
                self.homeserver + "/_matrix/media/v3/upload",
                data=ciphertext,
                params={"filename": filename},
                headers=headers,
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400 or not isinstance(body, dict):
                    body = body if isinstance(body, dict) else {}
                    raise MatrixError(resp.status, body.get("errcode"), "media upload")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise HomeserverUnavailable(f"media upload: {exc}") from exc
        uri = body.get("content_uri")
        if not isinstance(uri, str) or not uri.startswith("mxc://"):
            raise MatrixError(resp.status, None, "media upload: no content URI")
        return uri

    # ------------------------------------------------------------------ gaps
    async def missed_events(self, room_id: str, prev_batch: str, since: str) -> list[Any]:
        """The events of a room between our last sync (`since`) and the start of a
        *limited* timeline (`prev_batch`), oldest first, decrypted when the keys are
        here (else the `MegolmEvent`, which the undecryptable path keeps)."""
        raw: list[dict[str, Any]] = []
        token = prev_batch
        while True:
            page = await self.request(
                "GET",
                self._room(room_id) + "/messages",
                query={"from": token, "to": since, "dir": "b", "limit": str(GAP_PAGE)},
            )
            chunk = page.get("chunk") or []
            raw += [e for e in chunk if isinstance(e, dict)]
            end = page.get("end")
            if not chunk or not isinstance(end, str) or end == token:
                break
            token = end
        events: list[Any] = []
        for source in reversed(raw):
            event = Event.parse_event(source)
            if isinstance(event, MegolmEvent):
                event = self.try_decrypt(event, room_id) or event
            events.append(event)
        return events

    # --------------------------------------------------------- missing keys
    def try_decrypt(self, event: MegolmEvent, room_id: str) -> Event | None:
        """Decrypt with the keys held now; None while the session's key is still missing."""
        olm = self.client.olm
        assert olm is not None
        try:
            clear = olm.decrypt_megolm_event(event, room_id)
        except EncryptionError:
            return None
        return clear if isinstance(clear, Event) else None

    async def request_room_key(self, event: MegolmEvent, room_id: str) -> bool:
        """Ask the sender's devices for the key of `event` (once per session)."""
        try:
            return await self.room_keys.request_key(event, room_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HomeserverUnavailable(str(exc)) from exc

    # ------------------------------------------------------------ device keys
    async def _raw_keys_query(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", "/_matrix/client/v3/keys/query", body)

    async def _feed_nio_keys(self, raw: dict[str, Any]) -> None:
        """Give nio the same answer we checked, so its Olm sessions use the same keys."""
        resp = KeysQueryResponse.from_dict(raw)
        if isinstance(resp, KeysQueryResponse):
            await self.client.receive_response(resp)

    async def _claim_keys(self, devices: dict[str, list[str]]) -> None:
        require_held(self._held(), "keys claim")
        try:
            claim = await self.client.keys_claim(devices)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HomeserverUnavailable(str(exc)) from exc
        if isinstance(claim, KeysClaimError):
            raise _as_error(claim)


def _as_error(resp: Any) -> MatrixError:
    """nio error response → exception (HTTP status from the transport, errcode from nio)."""
    transport = getattr(resp, "transport_response", None)
    status = getattr(transport, "status", None)
    errcode = getattr(resp, "status_code", None)
    message = str(getattr(resp, "message", resp))
    if status is None and transport is None:
        return HomeserverUnavailable(message)
    return MatrixError(int(status) if status is not None else None, errcode, message)
