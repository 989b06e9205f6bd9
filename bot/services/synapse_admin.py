"""The few Synapse admin API calls the retention job and the account linking need,
with the admin token.

The bot's own account is not a server admin: purging rooms, history and media
takes a separate server-admin token (setting ``admin.synapse_admin_token``).
Without one, every call raises `NoAdminToken` and the job reports it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from bot.matrix.errors import HomeserverUnavailable, MatrixError

log = logging.getLogger(__name__)

DELETE_POLL_SECONDS = 0.2
DELETE_POLL_LIMIT = 600  # 2 minutes


class NoAdminToken(RuntimeError):
    """No Synapse admin token is configured."""


class SynapseAdmin:
    def __init__(self, homeserver: str, token: str | None) -> None:
        self.homeserver = homeserver.rstrip("/")
        self._token = token
        self._http: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        return self._token is not None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self._token is None:
            raise NoAdminToken("admin.synapse_admin_token is not configured")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            async with self._http.request(
                method,
                self.homeserver + path,
                json=body,
                headers={"Authorization": f"Bearer {self._token}"},
            ) as resp:
                data = await resp.json(content_type=None)
                data = data if isinstance(data, dict) else {}
                if resp.status >= 400:
                    raise MatrixError(resp.status, data.get("errcode"), str(data.get("error")))
                return data
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise HomeserverUnavailable(f"{method} {path}: {exc}") from exc

    async def room_exists(self, room_id: str) -> bool:
        try:
            await self._request("GET", f"/_synapse/admin/v1/rooms/{quote(room_id, safe='')}")
        except MatrixError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete_room(self, room_id: str) -> None:
        """Kick everyone, then purge the room and all its events from the database."""
        data = await self._request(
            "DELETE",
            f"/_synapse/admin/v2/rooms/{quote(room_id, safe='')}",
            {"purge": True, "block": False, "message": "Demande archivée : salon supprimé."},
        )
        delete_id = data.get("delete_id")
        if not delete_id:
            return
        for _ in range(DELETE_POLL_LIMIT):
            status = await self._request(
                "GET", f"/_synapse/admin/v2/rooms/delete_status/{quote(str(delete_id), safe='')}"
            )
            state = status.get("status")
            if state == "complete":
                return
            if state == "failed":
                raise MatrixError(500, None, f"room purge failed: {status.get('error')}")
            await asyncio.sleep(DELETE_POLL_SECONDS)
        raise MatrixError(None, None, f"room purge of {room_id} still running")

    async def purge_history(self, room_id: str, up_to_ms: int) -> None:
        """Delete the events of a room older than `up_to_ms` (local events included).

        Synapse purges the events *before* a boundary event and keeps the boundary.
        Given a timestamp, it takes as boundary the room's last event received before
        the first event of the whole server received after it: when another room's
        event comes first, that is the room's last event before `up_to_ms` (the
        form's confirmation), which then stays. So the boundary is named: the room's
        first event after `up_to_ms`; the timestamp only when there is none.
        """
        boundary = await self._first_event_after(room_id, up_to_ms)
        body: dict[str, Any] = {"delete_local_events": True}
        if boundary is None:
            body["purge_up_to_ts"] = up_to_ms
        else:
            body["purge_up_to_event_id"] = boundary
        try:
            data = await self._request(
                "POST", f"/_synapse/admin/v1/purge_history/{quote(room_id, safe='')}", body
            )
        except MatrixError as exc:
            if exc.status == 404:  # no event that old (or the room is gone): nothing to do
                return
            raise
        purge_id = data.get("purge_id")
        for _ in range(DELETE_POLL_LIMIT):
            status = await self._request(
                "GET", f"/_synapse/admin/v1/purge_history_status/{quote(str(purge_id), safe='')}"
            )
            if status.get("status") == "complete":
                return
            if status.get("status") == "failed":
                raise MatrixError(500, None, "history purge failed")
            await asyncio.sleep(DELETE_POLL_SECONDS)
        raise MatrixError(None, None, f"history purge of {room_id} still running")

    async def _first_event_after(self, room_id: str, ts_ms: int) -> str | None:
        try:
            data = await self._request(
                "GET",
                f"/_synapse/admin/v1/rooms/{quote(room_id, safe='')}/timestamp_to_event"
                f"?ts={int(ts_ms)}&dir=f",
            )
        except MatrixError as exc:
            if exc.status == 404:  # nothing after it (or the room is gone)
                return None
            raise
        event_id = data.get("event_id")
        return event_id if isinstance(event_id, str) else None

    async def media_uploader(self, mxc: str) -> str | None:
        """Who uploaded a media of this homeserver (None: not ours, or unknown)."""
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        try:
            data = await self._request(
                "GET",
                f"/_synapse/admin/v1/media/{quote(server, safe='')}/{quote(media_id, safe='')}",
            )
        except MatrixError as exc:
            if exc.status in (400, 404):
                return None
            raise
        found = data.get("media_info")
        info: dict[str, Any] = found if isinstance(found, dict) else {}
        uploader = info.get("user_id") if info.get("media_origin") is None else None
        return uploader if isinstance(uploader, str) else None

    async def delete_media(self, mxc: str) -> None:
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        try:
            await self._request(
                "DELETE",
                f"/_synapse/admin/v1/media/{quote(server, safe='')}/{quote(media_id, safe='')}",
            )
        except MatrixError as exc:
            if exc.status != 404:  # already gone: what we wanted
                raise

    # ------------------------------------------------------------------ accounts

    async def user_by_email(self, email: str) -> str | None:
        """The local account that has this email as a (verified) third-party ID."""
        try:
            data = await self._request(
                "GET", f"/_synapse/admin/v1/threepid/email/users/{quote(email, safe='')}"
            )
        except MatrixError as exc:
            if exc.status == 404:
                return None
            raise
        user = data.get("user_id")
        return user if isinstance(user, str) else None

    async def new_users(self, since_ms: int, *, page: int = 100) -> list[tuple[str, int]]:
        """Local accounts created after `since_ms` (user ID, creation in ms), oldest first."""
        found: list[tuple[str, int]] = []
        offset = 0
        while True:
            data = await self._request(
                "GET",
                "/_synapse/admin/v2/users?order_by=creation_ts&dir=b&guests=false"
                f"&deactivated=false&limit={page}&from={offset}",
            )
            users = data.get("users")
            rows = users if isinstance(users, list) else []
            for row in rows:
                created = int(row.get("creation_ts") or 0)
                if created <= since_ms:
                    return sorted(found, key=lambda item: item[1])
                found.append((str(row.get("name")), created))
            if len(rows) < page or data.get("next_token") is None:
                return sorted(found, key=lambda item: item[1])
            offset += len(rows)

    async def newest_user_ms(self) -> int:
        """When the newest local account was created (0: none)."""
        data = await self._request(
            "GET", "/_synapse/admin/v2/users?order_by=creation_ts&dir=b&guests=false&limit=1"
        )
        users = data.get("users")
        rows = users if isinstance(users, list) else []
        return int(rows[0].get("creation_ts") or 0) if rows else 0

    async def verified_emails(self, user_id: str) -> list[str]:
        """The account's email third-party IDs that the homeserver validated."""
        try:
            data = await self._request("GET", f"/_synapse/admin/v2/users/{quote(user_id, safe='')}")
        except MatrixError as exc:
            if exc.status == 404:
                return []
            raise
        out = []
        for item in data.get("threepids") or []:
            if (
                isinstance(item, dict)
                and item.get("medium") == "email"
                and item.get("validated_at")
                and isinstance(item.get("address"), str)
            ):
                out.append(str(item["address"]).strip().lower())
        return out
