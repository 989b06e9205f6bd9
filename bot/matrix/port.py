"""The Matrix transport seam: what the services ask of the homeserver, as one Protocol.

`MatrixGateway` (the nio adapter) implements it; the services, the sync loop, the
email bridge and the admin wiring are typed against it, so that the fast service tests
(tests/services/) give them a recording fake instead. A drift test
(tests/services/test_fakes_drift.py) checks that the fake keeps every public method of
the adapter, with the same signature.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nio import MegolmEvent, SyncResponse
    from nio.events import Event
    from nio.rooms import MatrixRoom

    from bot.matrix.device_trust import DeviceTrust


class Gateway(Protocol):
    @property
    def user_id(self) -> str: ...

    @property
    def device_trust(self) -> DeviceTrust: ...

    # -- sync
    async def sync(self, *, since: str | None, timeout_ms: int) -> SyncResponse: ...
    async def after_sync(self) -> None: ...
    async def catch_up_room_keys(self, users: Collection[str] | None = None) -> None: ...

    # -- requests
    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]: ...
    async def create_room(self, body: Mapping[str, Any]) -> str: ...
    async def joined_rooms(self) -> list[str]: ...
    async def invite(self, room_id: str, user_id: str, reason: str | None = None) -> None: ...
    async def kick(self, room_id: str, user_id: str, reason: str) -> None: ...
    async def ban(self, room_id: str, user_id: str, reason: str) -> None: ...
    async def join(self, room_id: str) -> None: ...
    async def leave(self, room_id: str, reason: str | None = None) -> None: ...
    async def members(self, room_id: str) -> dict[str, str]: ...
    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None: ...
    async def room_state(self, room_id: str) -> dict[tuple[str, str], dict[str, Any]]: ...
    async def put_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> str: ...
    async def send_plain(
        self,
        room_id: str,
        content: Mapping[str, Any],
        txn_id: str,
        event_type: str = "m.room.message",
    ) -> str: ...

    # -- the bot's view of its rooms, and encrypted sending
    def is_encrypted(self, room_id: str) -> bool: ...
    def track_new_room(self, room_id: str, *, invited: Collection[str]) -> None: ...
    async def refresh_members(self, room_id: str) -> MatrixRoom: ...
    def note_invited(self, room_id: str, user_id: str) -> None: ...
    def member_count(self, room_id: str) -> int | None: ...
    def present_members(self, room_id: str) -> set[str] | None: ...
    async def send_encrypted(
        self,
        room_id: str,
        content: Mapping[str, Any],
        txn_id: str,
        *,
        recipients: Collection[str],
        event_type: str = "m.room.message",
    ) -> str: ...

    # -- attachments
    async def fetch_attachment(
        self, content: Mapping[str, Any], *, max_bytes: int | None = None
    ) -> tuple[str, str, bytes]: ...
    async def send_attachment(
        self,
        room_id: str,
        filename: str,
        mimetype: str,
        data: bytes,
        txn_id: str,
        recipients: Collection[str],
    ) -> str: ...
    async def upload_attachment(self, data: bytes, filename: str) -> dict[str, Any]: ...

    # -- missing keys
    def try_decrypt(self, event: MegolmEvent, room_id: str) -> Event | None: ...
    async def request_room_key(self, event: MegolmEvent, room_id: str) -> bool: ...
