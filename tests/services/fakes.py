"""Recording fakes at the two transport seams: Matrix (`Gateway`) and SMTP (`Relay`).

They implement the same Protocols as the real adapters (`bot.matrix.port.Gateway`,
`bridge.delivery.Relay` / `RelayConnection`), with the same signatures (checked by
test_fakes_drift.py). Everything asked is appended to `calls`; a test scripts answers
and failures with `fail(...)`, and reads what was sent from `sent`, `kicked`, ...

The fake homeserver keeps two views of each room, as the real one does:
- `server`: the membership the homeserver holds (what `members` answers);
- the bot's own view (what `present_members` answers, nio's `client.rooms`), updated
  by what the bot does itself and by `refresh_members`, so a test can put an intruder
  in the room behind the bot's back (`force_join`) or in its view too (`seen=True`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiosmtplib
from nio.rooms import MatrixRoom

from bot.matrix import attachments as files
from bot.matrix.errors import MatrixError, MediaUnavailable
from bot.matrix.gateway import SavedLogin

if TYPE_CHECKING:
    from nio import MegolmEvent, SyncResponse
    from nio.events import Event

    from bot.matrix.device_trust import DeviceTrust
    from bridge.delivery import RelayConnection


@dataclass(frozen=True)
class Call:
    method: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Sent:
    room_id: str
    content: dict[str, Any]
    txn_id: str
    event_type: str
    encrypted: bool
    recipients: frozenset[str] | None
    event_id: str

    @property
    def body(self) -> str:
        return str(self.content.get("body", ""))


class _Trust:
    """What `!identite-accepter` reaches through the gateway: no pins in service tests."""

    pins = None

    def invalidate(self, users: Collection[str]) -> None:
        return None


class RecordingGateway:
    """A homeserver in memory, seen through the bot's `Gateway` port."""

    def __init__(self, user_id: str, *, server_name: str = "localhost") -> None:
        self._user_id = user_id
        self.server_name = server_name
        self.calls: list[Call] = []
        self.sent: list[Sent] = []
        self.created: list[dict[str, Any]] = []
        self.kicked: list[tuple[str, str, str]] = []
        self.banned: list[tuple[str, str, str]] = []
        self.invited: list[tuple[str, str]] = []
        self.state_puts: list[tuple[str, str, str, dict[str, Any]]] = []
        self.server: dict[str, dict[str, str]] = defaultdict(dict)
        self.state: dict[str, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
        self.media: dict[str, bytes] = {}
        self.decryptable: dict[str, Event] = {}
        self.syncs: asyncio.Queue[SyncResponse] = asyncio.Queue()
        # Scripted gaps of limited timelines (`missed_events`), per room.
        self.missed: dict[str, list[Any]] = {}
        self._view: dict[str, MatrixRoom] = {}
        self._script: dict[str, list[tuple[BaseException, dict[str, Any]]]] = defaultdict(list)
        self._by_txn: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(1)
        self._trust = _Trust()
        self._stalls: list[tuple[str, dict[str, Any], asyncio.Event]] = []

    # ------------------------------------------------------------------ scripting
    def fail(self, method: str, exc: BaseException, times: int = 1, **match: Any) -> None:
        """The next `times` calls of `method` raise `exc` (after being recorded); with
        `match` (e.g. ``room_id=...``), only the calls with those arguments."""
        self._script[method].extend([(exc, match)] * times)

    def stall(self, method: str, **match: Any) -> asyncio.Event:
        """Calls of `method` with these arguments wait until the returned event is set
        (a slow room: a large upload, a slow homeserver for one room)."""
        release = asyncio.Event()
        self._stalls.append((method, match, release))
        return release

    async def _maybe_stall(self, method: str, args: dict[str, Any]) -> None:
        for name, match, release in self._stalls:
            if name == method and all(args.get(k) == v for k, v in match.items()):
                await release.wait()

    def force_join(self, room_id: str, user_id: str, *, seen: bool = False) -> None:
        """Someone joins without the bot (a server admin): on the homeserver, and in the
        bot's view only if `seen` (a sync showed it)."""
        self.server[room_id][user_id] = "join"
        room = self._view.get(room_id)
        if seen and room is not None and user_id not in room.users:
            room.add_member(user_id, None, None)

    def join_as(self, room_id: str, user_id: str) -> None:
        """An invited participant accepts (as their client would)."""
        self.server[room_id][user_id] = "join"
        room = self._view.get(room_id)
        if room is not None and user_id not in room.users:
            room.add_member(user_id, None, None)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def sent_to(self, room_id: str) -> list[Sent]:
        return [s for s in self.sent if s.room_id == room_id]

    def _record(self, method: str, **args: Any) -> None:
        self.calls.append(Call(method, args))
        script = self._script.get(method, [])
        for i, (exc, match) in enumerate(script):
            if all(args.get(k) == v for k, v in match.items()):
                del script[i]
                raise exc

    def _event_id(self) -> str:
        return f"$ev{next(self._ids)}"

    # ------------------------------------------------------------------ session
    @property
    def user_id(self) -> str:
        return self._user_id

    @property
    def device_trust(self) -> DeviceTrust:
        return self._trust  # type: ignore[return-value]

    @property
    def device_id(self) -> str:
        return "FAKEDEVICE"

    async def connect(
        self,
        *,
        saved: SavedLogin | None,
        password: str | None,
        access_token: str | None = None,
    ) -> SavedLogin:
        self._record("connect", saved=saved)
        return saved or SavedLogin(self._user_id, self.device_id, "fake-token")

    async def close(self) -> None:
        self._record("close")

    # ------------------------------------------------------------------ sync
    async def sync(self, *, since: str | None, timeout_ms: int) -> SyncResponse:
        self._record("sync", since=since, timeout_ms=timeout_ms)
        return await self.syncs.get()

    async def after_sync(self) -> None:
        self._record("after_sync")

    async def missed_events(self, room_id: str, prev_batch: str, since: str) -> list[Any]:
        """The gap of a limited timeline: none unless a test scripted one."""
        self._record("missed_events", room_id=room_id, prev_batch=prev_batch, since=since)
        return list(self.missed.get(room_id, []))

    async def catch_up_room_keys(self, users: Collection[str] | None = None) -> None:
        self._record("catch_up_room_keys", users=users)

    # ------------------------------------------------------------------ requests
    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        self._record("request", method=method, path=path, body=body, query=query)
        return {}

    async def create_room(self, body: Mapping[str, Any]) -> str:
        self._record("create_room", body=body)
        room_id = f"!r{next(self._ids)}:{self.server_name}"
        self.created.append(dict(body))
        self.server[room_id][self._user_id] = "join"
        for user in body.get("invite", []):
            self.server[room_id][user] = "invite"
        for ev in body.get("initial_state", []):
            self.state[room_id][(ev["type"], ev.get("state_key", ""))] = dict(ev["content"])
        for field_name, etype in (("name", "m.room.name"), ("topic", "m.room.topic")):
            if field_name in body:
                self.state[room_id][(etype, "")] = {field_name: body[field_name]}
        if "power_level_content_override" in body:
            pl = dict(body["power_level_content_override"])
            self.state[room_id][("m.room.power_levels", "")] = pl
        return room_id

    async def joined_rooms(self) -> list[str]:
        self._record("joined_rooms")
        return [r for r, m in self.server.items() if m.get(self._user_id) == "join"]

    async def invite(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        self._record("invite", room_id=room_id, user_id=user_id, reason=reason)
        self.invited.append((room_id, user_id))
        self.server[room_id][user_id] = "invite"
        room = self._view.get(room_id)  # as the real gateway: the invitee is in our view
        if room is not None and user_id not in room.users:
            room.add_member(user_id, None, None, invited=True)

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        self._record("kick", room_id=room_id, user_id=user_id, reason=reason)
        self.kicked.append((room_id, user_id, reason))
        self.server[room_id][user_id] = "leave"
        self._forget(room_id, user_id)

    async def ban(self, room_id: str, user_id: str, reason: str) -> None:
        self._record("ban", room_id=room_id, user_id=user_id, reason=reason)
        self.banned.append((room_id, user_id, reason))
        self.server[room_id][user_id] = "ban"
        self._forget(room_id, user_id)

    async def join(self, room_id: str) -> None:
        self._record("join", room_id=room_id)
        self.server[room_id][self._user_id] = "join"

    async def leave(self, room_id: str, reason: str | None = None) -> None:
        self._record("leave", room_id=room_id, reason=reason)
        self.server[room_id][self._user_id] = "leave"

    async def members(self, room_id: str) -> dict[str, str]:
        self._record("members", room_id=room_id)
        return dict(self.server.get(room_id, {}))

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        self._record("state_event", room_id=room_id, event_type=event_type, state_key=state_key)
        found = self.state.get(room_id, {}).get((event_type, state_key))
        return dict(found) if found is not None else None

    async def room_state(self, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        self._record("room_state", room_id=room_id)
        return {k: dict(v) for k, v in self.state.get(room_id, {}).items()}

    async def put_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> str:
        self._record(
            "put_state",
            room_id=room_id,
            event_type=event_type,
            content=content,
            state_key=state_key,
        )
        self.state_puts.append((room_id, event_type, state_key, dict(content)))
        self.state[room_id][(event_type, state_key)] = dict(content)
        return self._event_id()

    async def send_plain(
        self,
        room_id: str,
        content: Mapping[str, Any],
        txn_id: str,
        event_type: str = "m.room.message",
    ) -> str:
        self._record(
            "send_plain", room_id=room_id, content=content, txn_id=txn_id, event_type=event_type
        )
        return self._sent(room_id, content, txn_id, event_type, encrypted=False, recipients=None)

    def _sent(
        self,
        room_id: str,
        content: Mapping[str, Any],
        txn_id: str,
        event_type: str,
        *,
        encrypted: bool,
        recipients: Collection[str] | None,
    ) -> str:
        # The homeserver remembers transaction IDs: the same txn gives the same event.
        known = self._by_txn.get((room_id, txn_id))
        if known is not None:
            return known
        event_id = self._event_id()
        self._by_txn[(room_id, txn_id)] = event_id
        self.sent.append(
            Sent(
                room_id=room_id,
                content=dict(content),
                txn_id=txn_id,
                event_type=event_type,
                encrypted=encrypted,
                recipients=frozenset(recipients) if recipients is not None else None,
                event_id=event_id,
            )
        )
        return event_id

    # ------------------------------------------------------------------ the bot's view
    def is_encrypted(self, room_id: str) -> bool:
        room = self._view.get(room_id)
        return bool(room and room.encrypted)

    def track_new_room(self, room_id: str, *, invited: Collection[str]) -> None:
        self.calls.append(Call("track_new_room", {"room_id": room_id, "invited": invited}))
        room = MatrixRoom(room_id, self._user_id, encrypted=True)
        room.add_member(self._user_id, None, None)
        for user in invited:
            room.add_member(user, None, None, invited=True)
        room.members_synced = True
        self._view[room_id] = room

    def _forget(self, room_id: str, user_id: str) -> None:
        room = self._view.get(room_id)
        if room is not None:
            room.remove_member(user_id)

    async def refresh_members(self, room_id: str) -> MatrixRoom:
        self._record("refresh_members", room_id=room_id)
        room = MatrixRoom(room_id, self._user_id, encrypted=True)
        for user, membership in self.server.get(room_id, {}).items():
            if membership in ("join", "invite"):
                room.add_member(user, None, None, invited=membership == "invite")
        room.members_synced = True
        self._view[room_id] = room
        return room

    def note_invited(self, room_id: str, user_id: str) -> None:
        self.calls.append(Call("note_invited", {"room_id": room_id, "user_id": user_id}))
        room = self._view.get(room_id)
        if room is not None and user_id not in room.users:
            room.add_member(user_id, None, None, invited=True)

    def forget_idle_rooms(self, keep: int | None = None) -> int:
        """The real gateway's memory bound; the fake keeps every view (nothing to save)."""
        self.calls.append(Call("forget_idle_rooms", {"keep": keep}))
        return 0

    def member_count(self, room_id: str) -> int | None:
        room = self._view.get(room_id)
        if room is not None:
            return len(room.users)
        members = self.server.get(room_id)
        if not members:
            return None
        return len([m for m in members.values() if m in ("join", "invite")])

    def present_members(self, room_id: str) -> set[str] | None:
        room = self._view.get(room_id)
        if room is None or not room.members_synced:
            return None
        return set(room.users)

    async def send_encrypted(
        self,
        room_id: str,
        content: Mapping[str, Any],
        txn_id: str,
        *,
        recipients: Collection[str],
        event_type: str = "m.room.message",
    ) -> str:
        args = {
            "room_id": room_id,
            "content": content,
            "txn_id": txn_id,
            "recipients": recipients,
            "event_type": event_type,
        }
        self._record("send_encrypted", **args)
        await self._maybe_stall("send_encrypted", args)
        return self._sent(
            room_id, content, txn_id, event_type, encrypted=True, recipients=recipients
        )

    async def share_room_key(self, room_id: str, recipients: Collection[str]) -> None:
        self._record("share_room_key", room_id=room_id, recipients=recipients)

    # ------------------------------------------------------------------ attachments
    async def fetch_attachment(
        self, content: Mapping[str, Any], *, max_bytes: int | None = None
    ) -> tuple[str, str, bytes]:
        self._record("fetch_attachment", content=content, max_bytes=max_bytes)
        ref = files.parse_encrypted_file(content)
        ciphertext = self.media.get(ref.url)
        if ciphertext is None:
            raise MediaUnavailable(502, None, "media download: Bad Gateway")
        return ref.filename, ref.mimetype, files.decrypt(ref, ciphertext)

    async def send_attachment(
        self,
        room_id: str,
        filename: str,
        mimetype: str,
        data: bytes,
        txn_id: str,
        recipients: Collection[str],
    ) -> str:
        self._record("send_attachment", room_id=room_id, filename=filename, txn_id=txn_id)
        file = await self.upload_attachment(data, filename)
        content = files.file_content(file, filename=filename, mimetype=mimetype, size=len(data))
        return self._sent(
            room_id, content, txn_id, "m.room.message", encrypted=True, recipients=recipients
        )

    async def upload_attachment(self, data: bytes, filename: str) -> dict[str, Any]:
        self._record("upload_attachment", filename=filename, size=len(data))
        ciphertext, keys = files.encrypt(data)
        url = f"mxc://{self.server_name}/m{next(self._ids)}"
        self.media[url] = ciphertext
        return {"url": url, **keys}

    # ------------------------------------------------------------------ missing keys
    def try_decrypt(self, event: MegolmEvent, room_id: str) -> Event | None:
        self.calls.append(Call("try_decrypt", {"event_id": event.event_id, "room_id": room_id}))
        return self.decryptable.get(event.event_id)

    async def request_room_key(self, event: MegolmEvent, room_id: str) -> bool:
        self._record("request_room_key", event_id=event.event_id, room_id=room_id)
        return True


# ---------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class Delivered:
    sender: str
    recipients: tuple[str, ...]
    message: bytes


@dataclass
class RecordingRelay:
    """The outgoing relay: records every connection and message; scripted answers.

    `answer(code, ...)` queues the relay's answer to the next DATA: 250 delivers, a 4xx
    or 5xx is raised as aiosmtplib raises it; `unreachable()` fails the next connection.
    """

    delivered: list[Delivered] = field(default_factory=list)
    attempts: list[Delivered] = field(default_factory=list)
    connections: int = 0
    _answers: list[int] = field(default_factory=list)
    _refuse_connections: int = 0

    def answer(self, *codes: int) -> None:
        self._answers.extend(codes)

    def unreachable(self, times: int = 1) -> None:
        self._refuse_connections += times

    async def connect(self) -> RelayConnection:
        if self._refuse_connections:
            self._refuse_connections -= 1
            raise aiosmtplib.SMTPConnectError("relay unreachable (scripted)")
        self.connections += 1
        return RecordingConnection(self)

    def _data(self, mail: Delivered) -> None:
        self.attempts.append(mail)
        code = self._answers.pop(0) if self._answers else 250
        if code == 250:
            self.delivered.append(mail)
            return
        raise aiosmtplib.SMTPDataError(code, f"scripted {code}")


class RecordingConnection:
    def __init__(self, relay: RecordingRelay) -> None:
        self._relay = relay
        self.closed = False

    async def sendmail(self, sender: str, recipients: Sequence[str], message: bytes) -> Any:
        self._relay._data(Delivered(sender, tuple(recipients), bytes(message)))
        return ({}, "250 OK")

    async def quit(self) -> Any:
        self.closed = True
        return (221, "bye")

    def close(self) -> None:
        self.closed = True


def raise_matrix(status: int, errcode: str = "M_UNKNOWN") -> MatrixError:
    """A homeserver refusal, for `fail(...)`."""
    return MatrixError(status, errcode, "scripted")
