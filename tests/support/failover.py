# ruff: noqa: ASYNC109
"""Two `aplus run` processes on one PostgreSQL database, one active (issue 14).

`ha_bot_files` turns a test bot's configuration into the HA one (its PostgreSQL
database, `[ha]` on); `Traffic` is a member who writes to the bot every 100 ms from
its own direct chat, so that a failover happens with messages in flight; `count`
checks afterwards, from the homeserver and from the bot's database, that each of
those messages got exactly one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import asyncpg
import nio

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from bot.services.login import saved_login
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import say

TRAFFIC_EVERY_S = 0.1


def enable_ha(files: proc.BotFiles, database_url: str) -> None:
    """PostgreSQL and `[ha]` in this bot's configuration file (both processes read it)."""
    # The file may already name the test backend's database: this one replaces it.
    kept: list[str] = []
    skipping = False
    for line in files.config.read_text().splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[database]"
        if not skipping:
            kept.append(line)
    kept += ["", "[database]", f'url = "{database_url}"', "", "[ha]", "enabled = true", ""]
    files.config.write_text("\n".join(kept))


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def healthz(port: int) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        body = await resp.json()
        assert isinstance(body, dict)
        return body


async def standby_port(process: proc.AplusProcess) -> int:
    found = await process.wait_log(r"standby: health endpoint on http://127\.0\.0\.1:(\d+)", 120)
    return int(found.group(1))


async def lease_epochs(database_url: str) -> tuple[str, int] | None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        row = await conn.fetchrow("SELECT holder, epoch FROM lease WHERE id = 1")
    finally:
        await conn.close()
    return None if row is None else (str(row["holder"]), int(row["epoch"]))


@dataclass
class Traffic:
    """One member writing `trafic <n>` to the bot every 100 ms in a direct chat."""

    client: nio.AsyncClient
    room_id: str
    sent: list[str] = field(default_factory=list)  # event IDs, in order
    failed_sends: int = 0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while True:
            started = time.monotonic()
            n += 1
            try:
                self.sent.append(await say(self.client, self.room_id, f"trafic {n}"))
            except AssertionError:
                self.failed_sends += 1  # the homeserver refused: not sent, not expected
            await asyncio.sleep(max(0.0, TRAFFIC_EVERY_S - (time.monotonic() - started)))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass(frozen=True)
class Counts:
    questions: int  # messages the member sent
    answered: int  # of those, with an answer recorded as sent in the bot's outbox
    lost: int  # sent, never answered
    bot_events: int  # the bot's events in the chat, on the homeserver
    duplicated: int  # bot events beyond one per outbox row (same answer twice)
    decrypted: int  # the bot's messages the member's own client decrypted
    strays: tuple[str, ...] = ()  # bot events of no outbox row: (txn ID, type) as seen by the bot


async def count(
    database_url: str,
    admin: proc.AdminApi,
    traffic: Traffic,
    bot_user_id: str,
    *,
    bot_token: str,
    timeout: float = 120,
) -> Counts:
    """Once the bot has answered everything: lost and duplicated answers, counted by
    the outbox's transaction IDs and by what the homeserver and the member hold."""
    txns = {f"reply-{event_id}" for event_id in traffic.sent}

    async def rows() -> dict[str, str | None]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            found = await conn.fetch(
                "SELECT txn_id, event_id FROM outbox_messages WHERE room_id = $1",
                traffic.room_id,
            )
        finally:
            await conn.close()
        return {str(r["txn_id"]): r["event_id"] for r in found}

    async def all_answered() -> bool:
        got = await rows()
        return all(got.get(t) for t in txns)

    with contextlib.suppress(matrix.WaitTimeout):
        await matrix.wait_for(all_answered, timeout, "every traffic message answered")
    got = await rows()
    answered = sum(1 for t in txns if got.get(t))
    timeline = await admin.timeline(traffic.room_id)
    bot_events = proc.sent_by(timeline, bot_user_id, "m.room.encrypted")
    decrypted = await decrypted_from(traffic.client, traffic.room_id, bot_user_id)
    # The bot's own view gives each of its events' transaction ID (unsigned, for the
    # device that sent it): what a duplicate would be made of.
    mine = proc.AdminApi(admin.homeserver, bot_token)
    path = f"/_matrix/client/v3/rooms/{quote(traffic.room_id)}/messages?dir=f&limit=1000"
    seen = [
        (str(e["event_id"]), str((e.get("unsigned") or {}).get("transaction_id")), e["type"])
        for e in (await mine.get(path)).get("chunk", [])
        if e.get("sender") == bot_user_id and "state_key" not in e
    ]
    # Read again after the homeserver's view: a row sent meanwhile is not a stray.
    outbox_events = {e for e in (await rows()).values() if e}
    strays = tuple(f"{txn} {kind}" for event, txn, kind in seen if event not in outbox_events)
    return Counts(
        questions=len(txns),
        answered=answered,
        lost=len(txns) - answered,
        bot_events=len(bot_events),
        duplicated=len(strays),
        decrypted=decrypted,
        strays=strays,
    )


async def decrypted_from(client: nio.AsyncClient, room_id: str, sender: str) -> int:
    """How many of `sender`'s messages in the room this member's client decrypts, read
    back through the whole history (a sync after a pause gives a limited timeline)."""
    for _ in range(3):  # the room keys come as to-device messages, in syncs
        await matrix.sync_once(client)
    token = client.next_batch
    decrypted = 0
    while True:
        resp = await client.room_messages(room_id, start=token, limit=100)
        assert isinstance(resp, nio.RoomMessagesResponse), resp
        for event in resp.chunk:
            if event.sender == sender and isinstance(
                event, nio.RoomMessageText | nio.RoomMessageNotice
            ):
                decrypted += 1
        if not resp.chunk or not resp.end or resp.end == token:
            return decrypted
        token = resp.end


async def setup(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path, postgres_url: str
) -> tuple[proc.BotFiles, proc.AdminApi, dict[str, nio.AsyncClient]]:
    """A bot with `[ha]` on `postgres_url`, two aidants in its directory and their clients."""
    admin = proc.AdminApi.of(synapse, await clients.user("admin", admin=True))
    files = await proc.register_bot(synapse, tmp_path / "bot")
    enable_ha(files, postgres_url)
    people = {"aidant": await clients.client("aidant"), "talker": await clients.client("talker")}
    directory = botsupport.Directory()
    async with files.store() as store:
        await botsupport.add_group(store, directory, "fs", "france_services", ["95"])
        for key, client in people.items():
            await botsupport.add_agent(
                store, directory, key, matrix_id=client.user_id, roles=[Role.AIDANT], group="fs"
            )
    return files, admin, people


async def bot_token(files: proc.BotFiles) -> str:
    async with files.store() as store:
        login = await saved_login(store, files.user_id)
    assert login is not None
    return login.access_token
