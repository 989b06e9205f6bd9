"""Restart time of a bot that lives in 1,000 rooms, next to a fresh nio initial sync.

Run: `.venv/bin/pytest -s tests/bench/test_bench_restart.py` (about 10 minutes on 2 cores,
nearly all of it creating the rooms; `BENCH_ROOMS=100` for a quick try).

Setup (nothing is reused from an earlier run): a new bot account and database; its own
client (the running bot's gateway) creates `BENCH_ROOMS` encrypted rooms with the body of
a demande room, a few at a time, each with one other member who joins. An aidant has a
direct chat with the bot. The bot digests all of it as it happens; an `!aide` answered
after the last room proves it is caught up. Then the bot is stopped.

Timed, `BENCH_RESTARTS` times: the aidant sends `!aide` while the bot is down (a new
event since the bot's saved sync position); the clock starts; a new `App` on the same
data folder, database and device runs `start()` then `run()`; the clock reads when the
reply is recorded as sent in the bot's database (read-only poll every 2 ms) and when the
aidant's client has decrypted it. Target: reply sent and received ≤ 3 s after
`App.start()` (worst restart).

Side by side, same run, bot stopped: a fresh nio E2EE client logs the bot account in on a
new device, with an empty store, and times its initial `/sync` of every room (the cost
the bot avoids by keeping its own sync position; reference 13–23 s at 1,000 rooms).

In-process, so a real process would add the interpreter start and the imports; the
import time of `bot.app` is measured in a subprocess and printed apart.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nio

from bot.app import App
from bot.devserver import LocalSynapse, RegisteredUser
from bot.domain.model import Role
from bot.domain.reference import format_reference, room_name
from bot.domain.room_spec import create_room_body
from tests.bench.conftest import (
    BotDb,
    Progress,
    bound,
    env_int,
    machine,
    poll_until,
    reply_after,
    report,
    summarize,
    table,
    verdict,
)
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, say

ROOMS = env_int("BENCH_ROOMS", 1000)
RESTARTS = env_int("BENCH_RESTARTS", 3)
CONCURRENCY = env_int("BENCH_CONCURRENCY", 4)
TARGET_S = 3.0
WAIT_S = 60.0


async def create_rooms(runner: botsupport.BotRunner, member: RegisteredUser, count: int) -> int:
    """`count` demande-like encrypted rooms made by the running bot's own client; `member`
    is invited in the request and joins. Returns how many rooms exist."""
    app = runner.app
    assert app is not None
    gateway = app.gateway
    progress = Progress("rooms created and joined", count, every=max(1, count // 10))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i + 1)
    made: list[str] = []

    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {member.access_token}"}
    ) as http:

        async def worker() -> None:
            while not queue.empty():
                seq = queue.get_nowait()
                reference = format_reference(2098, seq)
                body = create_room_body(
                    reference=reference,
                    name=room_name(reference, ["CAF"], "95"),
                    bot_user_id=runner.user_id,
                    invitees=[member.user_id],
                    allowed_servers=app.opening.specs.allowed_servers,
                    room_version=app.opening.specs.room_version,
                )
                room_id = await gateway.create_room(body)
                async with http.post(
                    f"{runner.synapse.base_url}/_matrix/client/v3/join/{room_id}", json={}
                ) as resp:
                    assert resp.status == 200, await resp.text()
                made.append(room_id)
                progress.step()

        async with asyncio.timeout(max(600.0, count * 2.0)):
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(made)


async def aidant_in_direct_chat(
    runner: botsupport.BotRunner, clients: matrix.Clients, wait: float = WAIT_S
) -> tuple[nio.AsyncClient, str]:
    """An aidant of the directory in a direct chat with the bot, answered once."""
    directory = botsupport.Directory()
    aidant = await clients.client("aidant")
    await botsupport.add_group(runner.store, directory, "fs", "france_services", ["95"])
    await botsupport.add_agent(
        runner.store, directory, "aidant", matrix_id=aidant.user_id, roles=[Role.AIDANT],
        group="fs",
    )  # fmt: skip
    dm = await botsupport.open_direct_chat(aidant, runner.user_id)
    await aide_answered(aidant, dm, runner.user_id, wait)
    return aidant, dm


async def aide_answered(aidant: nio.AsyncClient, dm: str, bot_id: str, bound: float) -> None:
    n = count_from(aidant, dm, bot_id)
    await say(aidant, dm, "!aide")
    reply = await reply_after(aidant, dm, bot_id, n, bound)
    assert "!demande" in reply, reply


@dataclass
class Restart:
    start_returned: float
    first_sync: float
    reply_sent: float
    reply_received: float


async def timed_restart(runner: botsupport.BotRunner, aidant: nio.AsyncClient, dm: str) -> Restart:
    """`!aide` sent while the bot is down; then a new App on the same data, timed."""
    assert runner.app is None, "the bot must be stopped"
    bot_id = runner.user_id
    n = count_from(aidant, dm, bot_id)
    event_id = await say(aidant, dm, "!aide")
    settings = runner.settings()
    db = BotDb(settings.database.url.reveal())
    first_sync: list[float] = []

    async def received_at() -> float:
        reply = await reply_after(aidant, dm, bot_id, n, WAIT_S)
        assert "!demande" in reply, reply
        return time.perf_counter()

    try:
        started = time.perf_counter()
        sent = asyncio.create_task(
            poll_until(lambda: db.message_sent(f"reply-{event_id}"), WAIT_S, "the reply sent")
        )
        received = asyncio.create_task(received_at())
        app = App(settings)
        runner.app = app
        await app.start()
        start_returned = time.perf_counter()
        sync = app.gateway.sync

        async def first_sync_timed(*args: object, **kwargs: object) -> nio.SyncResponse:
            resp = await sync(*args, **kwargs)  # type: ignore[arg-type]
            if not first_sync:
                first_sync.append(time.perf_counter())
            return resp

        app.gateway.sync = first_sync_timed  # type: ignore[method-assign]
        runner.task = asyncio.create_task(app.run(), name="bot")
        reply_sent = await sent
        reply_received = await received
        await runner.check_alive()
    finally:
        db.close()
    return Restart(
        start_returned=start_returned - started,
        first_sync=first_sync[0] - started,
        reply_sent=reply_sent - started,
        reply_received=reply_received - started,
    )


async def fresh_initial_sync(runner: botsupport.BotRunner, store_dir: Path) -> tuple[float, int]:
    """A new device of the bot account, empty store: its first /sync, timed."""
    store_dir.mkdir(parents=True)
    client = nio.AsyncClient(
        runner.synapse.base_url,
        runner.user_id,
        store_path=str(store_dir),
        config=nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
    )
    try:
        await matrix._ok(client.login(runner.password, device_name="bench fresh sync"), "login")
        started = time.perf_counter()
        await matrix._ok(client.sync(timeout=0), "initial sync")
        took = time.perf_counter() - started
        rooms = len(client.rooms)
        await matrix._ok(client.logout(), "logout")  # removes the bench device
    finally:
        await matrix.close_client(client)
    return took, rooms


def import_time() -> float:
    """What a real process adds before `App.start()`: the interpreter and the imports."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import bot.app, bot.cli"], check=True)
    return time.perf_counter() - started


@bound(900 + ROOMS * 2.0 + RESTARTS * 120.0)
async def test_restart_in_many_rooms(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    report(f"\nRestart benchmark: {ROOMS} rooms, {RESTARTS} timed restarts; {machine()}")
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        member = await clients.user("member")
        aidant, dm = await aidant_in_direct_chat(runner, clients)

        assert runner.app is not None
        # The direct chat, and whatever rooms the bot keeps for itself (e.g. an admin room).
        before = len(await runner.app.gateway.joined_rooms())
        setup_started = time.perf_counter()
        made = await create_rooms(runner, member, ROOMS)
        # Answered only once every earlier sync batch is handled: the bot is caught up.
        await aide_answered(aidant, dm, runner.user_id, max(WAIT_S, ROOMS * 0.5))
        joined = await runner.app.gateway.joined_rooms()
        assert made == ROOMS and len(joined) == before + ROOMS, (made, before, len(joined))
        report(f"  setup: {len(joined)} rooms in {time.perf_counter() - setup_started:.0f} s")
        await runner.stop()

        report(f"  restarts start; {machine()}")
        restarts: list[Restart] = []
        for i in range(RESTARTS):
            restarts.append(await timed_restart(runner, aidant, dm))
            await runner.stop()
            r = restarts[-1]
            report(
                f"  restart {i + 1}: start() {r.start_returned:.2f} s, first sync "
                f"{r.first_sync:.2f} s, reply sent {r.reply_sent:.2f} s, "
                f"received {r.reply_received:.2f} s"
            )

        fresh_s, fresh_rooms = await fresh_initial_sync(runner, tmp_path / "fresh-nio")
        assert fresh_rooms == len(joined), (fresh_rooms, len(joined))
        imports_s = import_time()

    def row(label: str, values: list[float]) -> list[str]:
        s = summarize(values)
        return [label, str(s.n), f"{s.median:.2f}", f"{s.maximum:.2f}"]

    report(
        table(
            f"Restart in {len(joined)} rooms (seconds from App.start(); `!aide` sent while down)",
            ["measure", "n", "median", "max"],
            [
                row("App.start() returned", [r.start_returned for r in restarts]),
                row("first sync returned", [r.first_sync for r in restarts]),
                row("reply to !aide sent (bot DB)", [r.reply_sent for r in restarts]),
                row("reply decrypted by the aidant", [r.reply_received for r in restarts]),
                row(f"fresh nio initial sync, {fresh_rooms} rooms", [fresh_s]),
            ],
        )
    )
    # Answered: the reply is both recorded as sent and decrypted by the aidant.
    answered = [max(r.reply_sent, r.reply_received) for r in restarts]
    worst = max(answered)
    median = summarize(answered).median
    report(
        f"restart → first new event answered: median {median:.2f} s, worst {worst:.2f} s; "
        f"target ≤ {TARGET_S:.0f} s → {verdict(worst <= TARGET_S)}\n"
        f"fresh initial sync: {fresh_s:.1f} s (reference 13–23 s at 1,000 rooms), "
        f"{fresh_s / median:.0f}× the restart\n"
        f"not counted above: a new process's interpreter start + imports ≈ {imports_s:.1f} s"
    )
