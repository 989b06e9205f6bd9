"""Opening overhead: `!confirmer` → demande room ready, the real bot against raw nio calls.

Run: `.venv/bin/pytest -s tests/bench/test_bench_open.py` (about 2 minutes).

What is timed, on one `perf_counter` clock, all clients in this process:

* **bot**: from the moment the aidant's client starts the `PUT` of its (encrypted)
  `!confirmer` (key sharing and encryption are done before the clock starts) until the
  bot's database row of the new demande says `creation_step = 'ready'` — set right after
  the homeserver accepted the encrypted dossier. A read-only SQLite connection polls it
  every 2 ms (detection lag ≤ 2 ms, mean ~1 ms).
* **raw**: a nio E2EE client (its own account) makes the calls the same work needs, no
  more: `POST /createRoom` with the very body the bot sends (`create_room_body`, same
  three invitees), then the encrypted dossier with nio's `room_send` (key query, one-time
  key claim and room-key sharing to the invitees' devices when needed, then the send).
  Timed from the `createRoom` request to the send's response.
* **raw reactive**: the same calls made by a nio client that long-polls `/sync` (with
  the bot's sync filter) and reacts to the aidant's `!confirmer` in its own direct chat.
  Timed like the bot, from the aidant's `PUT`: the floor for anything that reacts to a
  Matrix message, raw calls included.

Why this observable: "ready" means the dossier event is on the homeserver, encrypted
for the invitees' devices; for the raw clients that is the send's response. Watching
from an instructeur's client instead would add its sync wake-up and a join (an invited
user sees no timeline) to both sides: ~200 ms of someone else's latency that dilutes
the ratio and adds noise. The poller runs during every variant, so its small cost on the
shared event loop is paid by all.

Runs are interleaved (the order rotates every round) after warm-ups, so drift of the
shared machine hits every variant alike. The target (median bot ≤ 1.1 × median raw, issue 15) is
printed as PASS/MISS; the run fails only on a wrong result (a room not ready, a reply
missing, a dossier an instructeur cannot decrypt).

`BENCH_GUARD=1` runs both on a Synapse with the homeserver guard loaded
(`synapse_module/`, the `guarded` fixture of tests/conftest.py): the bot's createRoom and
invites are then checked against its ledger over HTTP. The raw clients' rooms carry no
demande state (the guard refuses it to anyone but the bot), so they pay nothing for the
guard: the ratio then includes the guard's whole cost.

`test_opening_timeline` then traces a few openings (HTTP calls, database transactions,
sync) by wrapping the running bot's objects from the outside, to show where time goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import nio
import pytest
from sqlalchemy import event as sa_event

from bot.devserver import LocalSynapse
from bot.domain import dossier as texts
from bot.domain.model import Role
from bot.domain.reference import format_reference, room_name
from bot.domain.room_spec import DEMANDE_STATE_TYPE, create_room_body
from bot.matrix import content as mx
from bot.matrix.gateway import SYNC_FILTER
from bot.services.dossier_view import participant_views
from tests.bench.conftest import (
    POLL_S,
    BotDb,
    bound,
    env_int,
    machine,
    reply_after,
    report,
    summarize,
    table,
    verdict,
)
from tests.support import bot as botsupport
from tests.support import guard, matrix
from tests.support.bot import count_from, filled_form

RUNS = env_int("BENCH_OPEN_RUNS", 30)
WARMUPS = env_int("BENCH_OPEN_WARMUPS", 3)
TRACED_RUNS = env_int("BENCH_OPEN_TRACED", 10)
TARGET_RATIO = 1.1
# Before each timed run: lets the previous run's tail (the bot digesting its new room's
# events, the aidant's reply) finish, so it does not land on the next variant.
SETTLE_S = 0.4
WAIT_S = 30.0
GUARD = os.environ.get("BENCH_GUARD") == "1"


# -- the parties ------------------------------------------------------------------


@dataclass
class World:
    runner: botsupport.BotRunner
    db: BotDb
    aidant: nio.AsyncClient
    instr1: nio.AsyncClient
    invitees: list[str]
    dm: str
    allowed_servers: tuple[str, ...]
    room_version: str
    territoire: str = "95"
    # Demandes of earlier tests in the same database (the guarded bot's is shared).
    demandes_before: int = 0
    dossier: dict[str, Any] = field(default_factory=dict)


async def make_world(
    synapse: LocalSynapse, clients: matrix.Clients, runner: botsupport.BotRunner, territoire: str
) -> World:
    """The directory of tests/integration/test_demande_flow.py: one aidant, two Matrix
    instructeurs and one e-mail-only instructeur at the CAF of the 95."""
    directory = botsupport.Directory()
    aidant = await clients.client("aidant")
    instr1 = await clients.client("instr1")
    instr2 = await clients.client("instr2")
    store = runner.store
    await botsupport.add_group(store, directory, "fs", "france_services", [territoire])
    await botsupport.add_group(store, directory, "caf", "caf", [territoire])
    for key, client, role, group in (
        ("aidant", aidant, Role.AIDANT, "fs"),
        ("instr1", instr1, Role.INSTRUCTEUR, "caf"),
        ("instr2", instr2, Role.INSTRUCTEUR, "caf"),
    ):
        await botsupport.add_agent(
            store, directory, key, matrix_id=client.user_id, roles=[role], group=group
        )
    await botsupport.add_agent(
        store,
        directory,
        "mailonly",
        matrix_id=None,
        email=f"{matrix.unique('sophie')}@caf95.example.test",
        roles=[Role.INSTRUCTEUR],
        group="caf",
    )
    dm = await botsupport.open_direct_chat(aidant, runner.user_id)
    app = runner.app
    assert app is not None
    db = BotDb(runner.settings().database.url.reveal())
    return World(
        runner=runner,
        db=db,
        territoire=territoire,
        demandes_before=db.last_demande_id(),
        aidant=aidant,
        instr1=instr1,
        invitees=sorted(c.user_id for c in (aidant, instr1, instr2)),
        dm=dm,
        allowed_servers=app.opening.specs.allowed_servers,
        room_version=app.opening.specs.room_version,
    )


async def send_timed(client: nio.AsyncClient, room_id: str, body: str) -> tuple[float, str]:
    """Send an encrypted text; returns (perf_counter when the PUT started, event ID).

    Member sync, key query and room-key sharing are done first, off the clock: the
    clock measures the bot, not the aidant's client.
    """
    room = client.rooms[room_id]
    if not room.members_synced:
        await matrix._ok(client.joined_members(room_id), "joined_members")
    if client.should_query_keys:
        await matrix._ok(client.keys_query(), "keys_query")
    assert client.olm is not None
    if client.olm.should_share_group_session(room_id):
        await matrix._ok(
            client.share_group_session(room_id, ignore_unverified_devices=True), "share keys"
        )
    started = time.perf_counter()
    resp = await matrix._ok(
        client.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True,
        ),
        "send",
    )
    return started, str(resp.event_id)


class ReadyWatch:
    """Polls the bot's database every 2 ms for the whole benchmark, whatever is timed."""

    def __init__(self, db: BotDb) -> None:
        self.db = db
        self._after: int | None = None
        self._seen: asyncio.Future[float] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ready-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def expect_after(self, last_id: int) -> None:
        self._after = last_id
        self._seen = asyncio.get_running_loop().create_future()

    async def seen(self) -> float:
        assert self._seen is not None
        return await asyncio.wait_for(self._seen, WAIT_S)

    async def _run(self) -> None:
        while True:
            # The same query whether or not a demande is awaited: same cost for every variant.
            ready = self.db.ready_after(self._after if self._after is not None else 1 << 62)
            if ready and self._seen is not None and not self._seen.done():
                self._seen.set_result(time.perf_counter())
                self._after = None
            await asyncio.sleep(POLL_S)


# -- the three variants -------------------------------------------------------------


@dataclass
class Sample:
    started: float
    ended: float
    room_id: str
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class BotVariant:
    name = "bot"

    def __init__(self, world: World, watch: ReadyWatch) -> None:
        self.w = world
        self.watch = watch
        self.wall_offset = time.time() - time.perf_counter()

    async def once(self) -> Sample:
        w = self.w
        bot_id = w.runner.user_id
        n = count_from(w.aidant, w.dm, bot_id)
        await botsupport.say(w.aidant, w.dm, filled_form(territoire=w.territoire))
        recap = await reply_after(w.aidant, w.dm, bot_id, n)
        assert "!confirmer" in recap, recap
        last = w.db.last_demande_id()
        self.watch.expect_after(last)
        await asyncio.sleep(SETTLE_S)
        started, event_id = await send_timed(w.aidant, w.dm, "!confirmer")
        ready = await self.watch.seen()
        opened = await reply_after(w.aidant, w.dm, bot_id, n + 1)
        assert "ouverte" in opened, opened
        row = w.db.one("SELECT id, room_id, reference FROM demandes WHERE id > ?", last)
        assert row is not None and row[1], "the demande has no room"
        demande_id, room_id, reference = row
        if not w.dossier:
            w.dossier.update(await self._dossier_content(int(demande_id)))
        return Sample(started, ready, str(room_id), self._phases(event_id, reference, started))

    def _wall(self, column_value: str | None) -> float | None:
        if column_value is None:
            return None
        at = datetime.fromisoformat(column_value).replace(tzinfo=UTC)
        return at.timestamp() - self.wall_offset

    def _phases(self, event_id: str, reference: str, started: float) -> dict[str, float]:
        """From the bot's own timestamps (wall clock, in the database): when it began
        handling `!confirmer`, and when createRoom had answered."""
        handled = self.w.db.one(
            "SELECT processed_at FROM processed_events WHERE event_id = ?", event_id
        )
        created = self.w.db.one(
            "SELECT at FROM audit WHERE action = 'room_created' AND reference = ?", reference
        )
        t_handled = self._wall(handled[0] if handled else None)
        t_created = self._wall(created[0] if created else None)
        if t_handled is None or t_created is None:
            return {}
        return {"handled": t_handled - started, "room_created": t_created - started}

    async def _dossier_content(self, demande_id: int) -> dict[str, Any]:
        """The bot's own dossier (same size and shape) for the raw clients to send."""
        runner = self.w.runner
        app = runner.app
        assert app is not None and app.policies is not None
        async with runner.store.transaction() as tx:
            demande = await tx.get_demande(demande_id)
            assert demande is not None
            form = await tx.load_form(demande_id)
            views, aidant_view = await participant_views(tx, demande, app.policies)
        names = {k: v.name for k, v in app.policies.organisations.items()}
        rendered = texts.render_dossier(
            demande.reference, form, demande.status, views, aidant_view, organisation_names=names
        )
        return mx.text(rendered.body, rendered.formatted_body, dossier=demande.reference)


class RawOpener:
    """What the work needs, made directly: createRoom with the bot's body, one E2EE send."""

    _seq = 0

    def __init__(self, client: nio.AsyncClient, world: World, http: aiohttp.ClientSession) -> None:
        self.client = client
        self.w = world
        self.http = http

    def body(self) -> dict[str, Any]:
        RawOpener._seq += 1
        reference = format_reference(2099, RawOpener._seq)
        body = create_room_body(
            reference=reference,
            name=room_name(reference, ["CAF"], self.w.territoire),
            bot_user_id=str(self.client.user_id),
            invitees=self.w.invitees,
            allowed_servers=self.w.allowed_servers,
            room_version=self.w.room_version,
        )
        if GUARD:  # only the bot may create a room with the demande state
            body["initial_state"] = [
                e for e in body["initial_state"] if e["type"] != DEMANDE_STATE_TYPE
            ]
        return body

    async def open(self, body: dict[str, Any]) -> str:
        room_id = await self.create(body)
        await self.send(room_id, body["invite"])
        return room_id

    async def create(self, body: dict[str, Any]) -> str:
        c = self.client
        async with self.http.post(
            f"{c.homeserver}/_matrix/client/v3/createRoom",
            json=body,
            headers={"Authorization": f"Bearer {c.access_token}"},
        ) as resp:
            data = await resp.json()
            assert resp.status == 200, data
        return str(data["room_id"])

    async def send(self, room_id: str, invited: list[str]) -> None:
        c = self.client
        # The client's knowledge of the room it just made (what a sync would tell it).
        room = nio.MatrixRoom(room_id, str(c.user_id), encrypted=True)
        room.add_member(str(c.user_id), None, None)
        for user in invited:
            room.add_member(user, None, None, invited=True)
        room.members_synced = True
        c.rooms[room_id] = room
        c.encrypted_rooms.add(room_id)
        assert c.olm is not None
        c.olm.update_tracked_users(room)
        if c.should_query_keys:
            await matrix._ok(c.keys_query(), "keys_query")
        await matrix._ok(
            c.room_send(
                room_id, "m.room.message", dict(self.w.dossier), ignore_unverified_devices=True
            ),
            "dossier send",
        )


class RawVariant:
    name = "raw"

    def __init__(self, opener: RawOpener) -> None:
        self.opener = opener

    async def once(self) -> Sample:
        body = self.opener.body()
        await asyncio.sleep(SETTLE_S)
        started = time.perf_counter()
        room_id = await self.opener.open(body)
        return Sample(started, time.perf_counter(), room_id)


class ReactiveVariant:
    """A minimal nio "bot": long-polls /sync, and on the aidant's `!confirmer` opens."""

    name = "raw reactive"

    def __init__(self, opener: RawOpener, world: World) -> None:
        self.opener = opener
        self.w = world
        self.dm = ""
        self._done: asyncio.Future[tuple[float, str]] | None = None
        self._body: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        c = self.opener.client
        aidant = self.w.aidant
        resp = await matrix._ok(
            aidant.room_create(
                is_direct=True,
                invite=[str(c.user_id)],
                preset=nio.RoomPreset.trusted_private_chat,
                initial_state=[
                    {
                        "type": "m.room.encryption",
                        "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                    }
                ],
            ),
            "direct chat",
        )
        self.dm = resp.room_id
        await matrix._ok(c.join(self.dm), "join")
        await matrix.sync_until(
            aidant, lambda: matrix.has_joined(aidant, self.dm, str(c.user_id)), what="join"
        )
        await matrix.sync_once(c, timeout_ms=0)
        self._task = asyncio.create_task(self._loop(), name="raw-reactive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        c = self.opener.client
        while True:
            resp = await matrix._ok(
                c.sync(timeout=30_000, sync_filter=SYNC_FILTER, since=c.next_batch), "sync"
            )
            info = resp.rooms.join.get(self.dm)
            for event in info.timeline.events if info else []:
                if (
                    isinstance(event, nio.RoomMessageText)
                    and event.sender == self.w.aidant.user_id
                    and event.body == "!confirmer"
                    and self._done is not None
                    and not self._done.done()
                ):
                    room_id = await self.opener.open(self._body)
                    self._done.set_result((time.perf_counter(), room_id))
            if c.should_query_keys:
                await matrix._ok(c.keys_query(), "keys_query")
            if c.should_claim_keys:
                await matrix._ok(c.keys_claim(c.get_users_for_key_claiming()), "keys_claim")
            await c.send_to_device_messages()

    async def once(self) -> Sample:
        self._body = self.opener.body()
        self._done = asyncio.get_running_loop().create_future()
        await asyncio.sleep(SETTLE_S)
        started, _ = await send_timed(self.w.aidant, self.dm, "!confirmer")
        if self._task is not None and self._task.done():
            self._task.result()
        ready, room_id = await asyncio.wait_for(self._done, WAIT_S)
        return Sample(started, ready, room_id)


# -- correctness ----------------------------------------------------------------------


async def check_dossiers(instr: nio.AsyncClient, room_ids: list[str]) -> None:
    """The instructeur joins every room and decrypts the dossier: the work was real."""
    report(f"  checking: {instr.user_id} joins {len(room_ids)} rooms and decrypts each dossier")
    await matrix.sync_until(
        instr,
        lambda: all(r in instr.invited_rooms or r in instr.rooms for r in room_ids),
        what="every invitation",
    )
    for room_id in room_ids:
        if room_id not in instr.rooms:
            await matrix._ok(instr.join(room_id), f"join {room_id}")
    box = matrix.inbox(instr)

    def all_read() -> bool:
        for room_id in room_ids:
            if box.undecryptable[room_id]:
                raise AssertionError(f"dossier in {room_id} cannot be decrypted")
        return all(box.texts[r] for r in room_ids)

    await matrix.sync_until(instr, all_read, 120, "every dossier decrypted")
    for room_id in room_ids:
        assert "Dupontel" in box.texts[room_id][0], f"not the dossier in {room_id}"


async def check_bot_rooms(world: World, expected: int) -> None:
    rows = world.db._db.execute(
        "SELECT reference, creation_step, room_id, dossier_event_id FROM demandes WHERE id > ?",
        (world.demandes_before,),
    ).fetchall()
    assert len(rows) == expected, (len(rows), expected)
    for reference, step, room_id, dossier in rows:
        assert step == "ready" and room_id and dossier, (reference, step, room_id, dossier)


# -- the benchmark --------------------------------------------------------------------


@pytest.fixture
def homeserver(request: pytest.FixtureRequest) -> LocalSynapse:
    """The session's Synapse, or with BENCH_GUARD=1 the one with the guard loaded."""
    if GUARD:
        env: guard.GuardedHomeserver = request.getfixturevalue("guarded")
        return env.synapse
    server: LocalSynapse = request.getfixturevalue("synapse")
    return server


@pytest.fixture
async def clients(homeserver: LocalSynapse, tmp_path: Path) -> AsyncIterator[matrix.Clients]:
    """Users and clients on `homeserver` (shadows the suite's fixture of the same name)."""
    pool = matrix.Clients(homeserver, tmp_path / "nio")
    try:
        yield pool
    finally:
        await pool.aclose()


@contextlib.asynccontextmanager
async def _runner(
    request: pytest.FixtureRequest, synapse: LocalSynapse, tmp_path: Path
) -> AsyncIterator[tuple[botsupport.BotRunner, str]]:
    if GUARD:
        env: guard.GuardedHomeserver = request.getfixturevalue("guarded")
        runner = env.runner()
        try:
            yield runner, guard.next_territoire()
        finally:
            await runner.stop()
        return
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        yield runner, "95"


@contextlib.asynccontextmanager
async def bench_world(
    request: pytest.FixtureRequest,
    synapse: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
) -> AsyncIterator[tuple[World, ReadyWatch, aiohttp.ClientSession]]:
    async with _runner(request, synapse, tmp_path) as (runner, territoire):
        await runner.start()
        world = await make_world(synapse, clients, runner, territoire)
        watch = ReadyWatch(world.db)
        watch.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield world, watch, http
        finally:
            await watch.stop()
            world.db.close()
            await runner.check_alive()


@bound(600 + (WARMUPS + RUNS) * 3 * 10.0)
async def test_opening_overhead(
    request: pytest.FixtureRequest,
    homeserver: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
) -> None:
    report(f"\nhomeserver guard loaded: {'yes' if GUARD else 'no'} (BENCH_GUARD=1 loads it)")
    async with bench_world(request, homeserver, clients, tmp_path) as (world, watch, http):
        bot = BotVariant(world, watch)
        raw = RawVariant(RawOpener(await clients.client("raw"), world, http))
        reactive = ReactiveVariant(RawOpener(await clients.client("reactive"), world, http), world)
        await reactive.start()
        variants: list[Any] = [bot, raw, reactive]
        samples: dict[str, list[Sample]] = defaultdict(list)
        rooms: list[str] = []
        report(
            f"\nOpening overhead: {WARMUPS} warm-up and {RUNS} timed rounds of "
            f"{len(variants)} interleaved variants; {machine()}"
        )
        try:
            for round_ in range(WARMUPS + RUNS):
                # Rotate the order each round; round 0 starts with the bot (its first
                # dossier is the content the raw clients send).
                shift = round_ % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    sample = await variant.once()
                    rooms.append(sample.room_id)
                    if round_ >= WARMUPS:
                        samples[variant.name].append(sample)
                if (round_ + 1) % 10 == 0:
                    report(f"  round {round_ + 1}/{WARMUPS + RUNS}")
        finally:
            await reactive.stop()

        await check_bot_rooms(world, WARMUPS + RUNS)
        await check_dossiers(world.instr1, rooms)

        stats = {name: summarize([s.seconds for s in runs]) for name, runs in samples.items()}
        labels = {
            "bot": "bot: !confirmer PUT → DB ready",
            "raw": "raw: createRoom → E2EE send done",
            "raw reactive": "raw reactive: !confirmer PUT → send done",
        }
        report(
            table(
                f"Opening a demande (ms; {RUNS} runs each after {WARMUPS} warm-ups, interleaved)",
                ["variant", "n", "median", "p95", "min", "max"],
                [[labels[name], *stats[name].ms()] for name in labels],
            )
        )
        report(f"at the end: {machine()}")
        ratio = stats["bot"].median / stats["raw"].median
        ratio_p95 = stats["bot"].p95 / stats["raw"].p95
        floor = stats["bot"].median / stats["raw reactive"].median
        report(
            f"ratio of medians bot/raw = {ratio:.2f}  (p95: {ratio_p95:.2f}); "
            f"target ≤ {TARGET_RATIO} → {verdict(ratio <= TARGET_RATIO)}\n"
            f"ratio of medians bot/raw reactive (same start) = {floor:.2f}"
        )
        phases = [s.phases for s in samples["bot"] if s.phases]
        if phases:
            handled = statistics.median(p["handled"] for p in phases)
            created = statistics.median(p["room_created"] for p in phases)
            report(
                "bot, medians from its own timestamps: "
                f"`!confirmer` handled after {handled * 1000:.0f} ms, createRoom answered "
                f"after {created * 1000:.0f} ms, ready after "
                f"{stats['bot'].median * 1000:.0f} ms"
            )


# -- where the time goes ----------------------------------------------------------------

_ROOM = re.compile(r"/rooms/[^/]+")
_TXN = re.compile(r"(/send/[^/]+|/sendToDevice/[^/]+)/[^/?]+")


def _shape(method: str, path: str) -> str:
    path = _TXN.sub(r"\1/…", _ROOM.sub("/rooms/…", unquote(path).split("?")[0]))
    return f"{method} {path.replace('/_matrix/client/v3', '')}"


@dataclass
class Span:
    label: str
    start: float
    end: float
    statements: int = 0


SYNC = "sync (long-poll, until it returns)"
CREATE = "POST /createRoom"
SEND = "PUT /rooms/…/send/m.room.encrypted/…"
SHARE = "room-key share (claim, Olm, to-device)"
MEMBERS = "GET /rooms/…/members"
DB = "db tx"


class Tracer:
    """Wraps a running client's objects (never the bot's code) to record what it does."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.statements = 0

    def _record(self, label: str, start: float, statements: int = 0) -> None:
        self.spans.append(Span(label, start, time.perf_counter(), statements))

    def _count_statement(self, *_: Any) -> None:
        self.statements += 1

    def wrap_async(self, obj: Any, name: str, label: Callable[..., str]) -> None:
        original = getattr(obj, name)

        async def traced(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self._record(label(*args, **kwargs), start)

        setattr(obj, name, traced)

    def wrap_transactions(self, store: Any) -> None:
        original = store.transaction
        tracer = self

        def transaction() -> Any:
            caller = sys._getframe(1).f_code.co_name

            @contextlib.asynccontextmanager
            async def traced() -> AsyncIterator[Any]:
                start, before = time.perf_counter(), tracer.statements
                try:
                    async with original() as tx:
                        yield tx
                finally:
                    tracer._record(f"{DB} ({caller})", start, tracer.statements - before)

            return traced()

        store.transaction = transaction

    def install_bot(self, runner: botsupport.BotRunner) -> None:
        app = runner.app
        assert app is not None
        gw = app.gateway
        self.wrap_async(gw, "request", lambda method, path, *a, **k: _shape(method, path))
        self.wrap_async(
            gw.client, "_send", lambda cls, method, path, *a, **k: f"nio {cls.__name__}"
        )
        self.wrap_async(gw, "sync", lambda *a, **k: SYNC)
        # The room-key share: `_share_room_key` at the time of writing, `room_keys.share`
        # in the gateway's next version.
        if hasattr(gw, "_share_room_key"):
            self.wrap_async(gw, "_share_room_key", lambda *a, **k: SHARE)
        elif hasattr(gw, "room_keys"):
            self.wrap_async(gw.room_keys, "share", lambda *a, **k: SHARE)
        self.wrap_async(app.sync.router, "handle", lambda *a, **k: "handle sync batch")
        self.wrap_transactions(app.store)
        # SQL statements per transaction (BEGIN/COMMIT are not cursor executions).
        engine = app.store.engine.sync_engine
        sa_event.listen(engine, "before_cursor_execute", self._count_statement)

    def install_raw(self, opener: RawOpener) -> None:
        c = opener.client
        self.wrap_async(opener, "create", lambda *a, **k: CREATE)
        self.wrap_async(c, "_send", lambda cls, method, path, *a, **k: f"nio {cls.__name__}")
        self.wrap_async(c, "share_group_session", lambda *a, **k: SHARE)

    def window(self, start: float, end: float, lag: float = 0.0) -> list[Span]:
        """Spans inside [start, end]; with `lag`, none that began within the observation lag
        before `end` (the bot's next task, e.g. the aidant's reply, starting right after
        the "ready" commit that the 2 ms poll has not seen yet)."""
        return [s for s in self.spans if s.end >= start and s.start <= end - lag]


def _took(span: Span, sample: Sample) -> float:
    return min(span.end, sample.ended) - max(span.start, sample.started)


def _phases(sample: Sample, spans: list[Span]) -> dict[str, float]:
    """Disjoint phases of one opening; "rest" is what no traced call covers (CPU: decrypt,
    handlers, Olm/Megolm encryption outside the key share, event-loop waits)."""

    def total(match: Callable[[str], bool]) -> float:
        return sum(_took(s, sample) for s in spans if match(s.label))

    phases = {
        "delivery: aidant's PUT → bot's sync returns": total(lambda label: label == SYNC),
        "database transactions": total(lambda label: label.startswith(DB)),
        CREATE: total(lambda label: label == CREATE),
        MEMBERS: total(lambda label: label == MEMBERS),
        SHARE: total(lambda label: label == SHARE),
        f"{SEND} (dossier)": total(lambda label: label in (SEND, "nio RoomSendResponse")),
    }
    phases["rest (CPU, loop)"] = sample.seconds - sum(phases.values())
    return phases


def _print_timeline(opening: Sample, spans: list[Span]) -> None:
    rows = [
        [
            span.label,
            f"{(max(span.start, opening.started) - opening.started) * 1000:.1f}",
            f"{(span.end - opening.started) * 1000:.1f}",
            f"{(span.end - max(span.start, opening.started)) * 1000:.1f}",
            str(span.statements) if span.label.startswith(DB) else "",
        ]
        for span in sorted(spans, key=lambda s: s.start)
    ]
    report(
        table(
            f"The bot's median traced opening ({opening.seconds * 1000:.0f} ms), "
            "ms from the aidant's PUT; calls nest inside `handle sync batch`",
            ["call", "from", "to", "took", "SQL"],
            rows,
        )
    )


@bound(600 + TRACED_RUNS * 2 * 10.0)
async def test_opening_timeline(
    request: pytest.FixtureRequest,
    homeserver: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
) -> None:
    """Where an opening's time goes, bot and raw side by side (traced, interleaved)."""
    async with bench_world(request, homeserver, clients, tmp_path) as (world, watch, http):
        bot = BotVariant(world, watch)
        opener = RawOpener(await clients.client("raw"), world, http)
        raw = RawVariant(opener)
        report(f"\nTraced openings; {machine()}")
        for _ in range(WARMUPS):
            await bot.once()
            await raw.once()
        bot_tracer, raw_tracer = Tracer(), Tracer()
        bot_tracer.install_bot(world.runner)
        raw_tracer.install_raw(opener)
        samples: dict[str, list[Sample]] = defaultdict(list)
        for _ in range(TRACED_RUNS):
            samples["bot"].append(await bot.once())
            samples["raw"].append(await raw.once())
        await asyncio.sleep(SETTLE_S)  # the last batch's spans end after its sample
        await check_bot_rooms(world, WARMUPS + TRACED_RUNS)

    traced = {
        "bot": [(s, bot_tracer.window(s.started, s.ended, POLL_S)) for s in samples["bot"]],
        "raw": [(s, raw_tracer.window(s.started, s.ended)) for s in samples["raw"]],
    }
    phases = {name: [_phases(s, spans) for s, spans in runs] for name, runs in traced.items()}
    rows = []
    for phase in phases["bot"][0]:
        b = statistics.median(p[phase] for p in phases["bot"]) * 1000
        r = statistics.median(p[phase] for p in phases["raw"]) * 1000
        rows.append([phase, f"{b:.1f}", f"{r:.1f}", f"{b - r:+.1f}"])
    totals = {name: statistics.median(s.seconds for s in samples[name]) * 1000 for name in samples}
    rows.append(
        [
            "total (median opening)",
            f"{totals['bot']:.0f}",
            f"{totals['raw']:.0f}",
            f"{totals['bot'] - totals['raw']:+.0f}",
        ]
    )
    report(
        table(
            f"Where the time goes: {TRACED_RUNS} traced openings each, interleaved "
            "(medians per phase, ms; phases do not add up exactly to the median total)",
            ["phase", "bot", "raw", "bot − raw"],
            rows,
        )
    )
    bot_runs = traced["bot"]
    counts: dict[str, list[int]] = defaultdict(list)
    for _, spans in bot_runs:
        per: dict[str, int] = defaultdict(int)
        for span in spans:
            per[span.label] += 1
        for label, n in per.items():
            counts[label].append(n)
    db_spans = [[s for s in spans if s.label.startswith(DB)] for _, spans in bot_runs]
    report(
        "bot database work per opening (median): "
        f"{statistics.median(len(d) for d in db_spans):.0f} transactions, "
        f"{statistics.median(sum(s.statements for s in d) for d in db_spans):.0f} SQL statements"
    )
    report(
        "bot calls per opening: "
        + ", ".join(
            f"{label} ×{statistics.median(n):.0f}"
            for label, n in sorted(counts.items())
            if label not in (SYNC, "handle sync batch")
        )
    )
    by_time = sorted(bot_runs, key=lambda t: t[0].seconds)
    _print_timeline(*by_time[len(by_time) // 2])
