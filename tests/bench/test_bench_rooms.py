"""Room-count probe: what the bot costs as the number of rooms it is in grows (issue 15.2).

Run: `APLUS_ROOMS_PROBE=1000,5000 .venv/bin/pytest -s -p no:cacheprovider
tests/bench/test_bench_rooms.py` (checkpoints in one run, rooms added between them;
`APLUS_ROOMS_PROBE=50,100` for a quick try).

Rooms (nothing is reused from an earlier run): the running bot's own client creates
encrypted rooms with the exact body of a demande room (`create_room_body`: name, topic,
power levels, join rules, history visibility, encryption), one helper account invited in
the request, `APLUS_ROOMS_CONCURRENCY` at a time. What differs from a real demande room:
the invitee never joins, nobody writes (about 9 state events, no messages, so no Megolm
session per room), and the rooms are not demandes in the bot's database.

At each checkpoint N, the bot caught up (an `!aide` answered after the last room):

* memory: the process's RSS (and its growth per room over the first segment, before any
  restart), the rooms in nio's memory (those a sync mentioned since the bot's last
  restart) and their size (a walk of every object reachable from `client.rooms`, types,
  modules and functions excluded): bytes per room. *HEAD* is the old behaviour (every
  room stays: `room_cache = None` while the rooms are made); *cache* is the same bot
  right after `forget_idle_rooms()` applied `ROOM_CACHE` (or `APLUS_ROOMS_CACHE`).
* per-event latency in the one busy room (the aidant's direct chat, every other room
  quiet): the aidant's `PUT` of `!aide` returned → the bot's reply recorded as sent
  (bot database, polled every 2 ms); `APLUS_ROOMS_SAMPLES` samples.
* Synapse's `/sync` for the bot account, from a second device of it (so that the bot's
  own to-device messages are not consumed), with the bot's filter (`SYNC_FILTER`), raw
  HTTP, after each sample: incremental with the sample's two events, then incremental
  with nothing new; and one initial `/sync` with the same filter while N ≤
  `APLUS_ROOMS_INITIAL_MAX` (it is long).
* restart: as `test_bench_restart.py` (an `!aide` sent while the bot is down; a new
  `App` on the same data: `start()`, then `run()` until the reply is sent and decrypted),
  `APLUS_ROOMS_RESTARTS` times.

Times are extrapolated to 100,000 rooms by a least-squares line through the
checkpoints (the cost assumed linear in N; with two checkpoints, the line through them);
memory as bytes per room × 100,000. `APLUS_ROOMS_BUDGET_S` (3600) bounds the run: a
checkpoint that would not fit, at the creation rate measured so far, is skipped and said
so; the table is printed after every checkpoint.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import sys
import time
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nio

from bot.devserver import LocalSynapse, RegisteredUser
from bot.domain.reference import format_reference, room_name
from bot.domain.room_spec import create_room_body
from bot.matrix.gateway import ROOM_CACHE
from bot.services.room_guard import STATE_CHECK_CONCURRENCY
from tests.bench.conftest import (
    BotDb,
    ProbeDevice,
    Progress,
    bound,
    env_int,
    machine,
    poll_until,
    reply_after,
    report,
    summarize,
    table,
)
from tests.bench.test_bench_restart import aidant_in_direct_chat, aide_answered, timed_restart
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, say

CHECKPOINTS = sorted(
    int(n) for n in os.environ.get("APLUS_ROOMS_PROBE", "1000,5000").split(",") if n.strip()
)
CONCURRENCY = env_int("APLUS_ROOMS_CONCURRENCY", 4)
SAMPLES = env_int("APLUS_ROOMS_SAMPLES", 10)
RESTARTS = env_int("APLUS_ROOMS_RESTARTS", 2)
INITIAL_MAX = env_int("APLUS_ROOMS_INITIAL_MAX", 5000)
# The run's own time limit: a checkpoint that would not fit is skipped (and said so).
BUDGET_S = float(env_int("APLUS_ROOMS_BUDGET_S", 3600))
TARGET_ROOMS = 100_000
# The cache applied for the *cache* column (default the product's; smaller to show it
# at work with fewer rooms).
CACHE = env_int("APLUS_ROOMS_CACHE", ROOM_CACHE)
STATE_SAMPLE = 200  # rooms whose state is read as the start-up check reads it
WAIT_S = 120.0
# Seconds per room made, generous (measured ~0.25–0.5 s on 2 shared cores).
PER_ROOM_S = 0.6


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


def object_counts() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def deep_size(roots: list[Any]) -> int:
    """Bytes of every object reachable from `roots` (each counted once), types, modules
    and functions excluded: what nio's rooms hold."""
    seen: set[int] = set()
    stack = list(roots)
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SHARED):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


async def create_rooms(
    runner: botsupport.BotRunner, invitee: RegisteredUser, first: int, count: int
) -> list[str]:
    """`count` demande-like encrypted rooms made by the running bot's own client."""
    app = runner.app
    assert app is not None
    gateway = app.gateway
    progress = Progress("rooms created", count, every=max(1, count // 10))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(first + i)
    made: list[str] = []

    async def worker() -> None:
        while not queue.empty():
            seq = queue.get_nowait()
            reference = format_reference(2097, seq)
            body = create_room_body(
                reference=reference,
                name=room_name(reference, ["CAF"], "95"),
                bot_user_id=runner.user_id,
                invitees=[invitee.user_id],
                allowed_servers=app.opening.specs.allowed_servers,
                room_version=app.opening.specs.room_version,
            )
            made.append(await gateway.create_room(body))
            progress.step()

    async with asyncio.timeout(max(600.0, count * PER_ROOM_S * 2)):
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return made


@dataclass
class Checkpoint:
    rooms: int
    rss_mb: float = 0.0
    nio_rooms_before: int = 0
    nio_bytes_before: int = 0
    nio_rooms_after: int = 0
    nio_bytes_after: int = 0
    latency: list[float] = field(default_factory=list)
    sync_busy: list[float] = field(default_factory=list)
    sync_quiet: list[float] = field(default_factory=list)
    # The same request, same moment, for an account in one room: the machine's load,
    # so that a growth with N can be told from a busier machine.
    sync_control: list[float] = field(default_factory=list)
    initial_s: float | None = None
    initial_mb: float | None = None
    restart_answered: list[float] = field(default_factory=list)
    restart_first_sync: list[float] = field(default_factory=list)
    state_check_s: float = 0.0  # per room, as the start-up check reads it
    load: str = ""

    @property
    def bytes_per_room(self) -> float:
        return self.nio_bytes_before / max(1, self.nio_rooms_before)


def fit(points: list[tuple[float, float]], at: float) -> tuple[float, float, float]:
    """(intercept, slope, value at `at`) of the least-squares line through `points`."""
    n = len(points)
    if n == 1:  # no line through one point
        return math.nan, math.nan, math.nan
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    intercept = my - slope * mx
    return intercept, slope, intercept + slope * at


async def busy_room_samples(
    runner: botsupport.BotRunner,
    aidant: nio.AsyncClient,
    dm: str,
    probe: ProbeDevice,
    point: Checkpoint,
    control: ProbeDevice | None = None,
) -> None:
    """`!aide` → reply sent, then the probe device's incremental syncs, SAMPLES times."""
    settings = runner.settings()
    db = BotDb(settings.database.url.reveal())
    try:
        for _ in range(SAMPLES):
            n = count_from(aidant, dm, runner.user_id)
            event_id = await say(aidant, dm, "!aide")
            put_returned = time.perf_counter()
            txn = f"reply-{event_id}"
            sent = await poll_until(lambda: db.message_sent(txn), WAIT_S, "the reply sent")  # noqa: B023
            point.latency.append(sent - put_returned)
            reply = await reply_after(aidant, dm, runner.user_id, n, WAIT_S)
            assert "!demande" in reply, reply
            took, _, probe.since = await probe.sync(probe.since)
            point.sync_busy.append(took)
            took, _, probe.since = await probe.sync(probe.since)
            point.sync_quiet.append(took)
            if control is not None:
                took, _, control.since = await control.sync(control.since)
                point.sync_control.append(took)
    finally:
        db.close()


async def state_check(runner: botsupport.BotRunner, rooms: list[str]) -> float:
    """Seconds per room of `GET /state`, `STATE_CHECK_CONCURRENCY` at a time: what the
    guard's start-up check (`check_open_rooms`) spends on every open demande room."""
    assert runner.app is not None
    gateway = runner.app.gateway
    limit = asyncio.Semaphore(STATE_CHECK_CONCURRENCY)

    async def one(room_id: str) -> None:
        async with limit:
            state = await gateway.room_state(room_id)
            assert ("fr.aplus.demande", "") in state, room_id

    started = time.perf_counter()
    await asyncio.gather(*(one(r) for r in rooms))
    return (time.perf_counter() - started) / len(rooms)


def nio_rooms(runner: botsupport.BotRunner) -> tuple[int, int]:
    assert runner.app is not None
    rooms = runner.app.gateway.client.rooms
    gc.collect()
    return len(rooms), deep_size(list(rooms.values()))


def med(values: list[float]) -> float:
    return summarize(values).median


def summary(points: list[Checkpoint], grown_per_room: float | None) -> str:
    """The table so far (printed after each checkpoint: a run stopped early keeps it)."""
    mb = 2**20
    per_room = [p.bytes_per_room for p in points]
    held = med(per_room)
    rows: list[list[str]] = [
        ["rooms in nio's memory (since the last restart)"]
        + [str(p.nio_rooms_before) for p in points]
        + ["", ""],
        ["nio's rooms, bytes per room"] + [f"{b:.0f}" for b in per_room] + ["", f"{held:.0f}"],
        ["nio's rooms, MB, HEAD (every room stays)"]
        + [f"{p.nio_bytes_before / mb:.1f}" for p in points]
        + [f"{held * 1000 / mb:.2f}", f"{held * TARGET_ROOMS / mb:.0f}"],
        [f"nio's rooms, MB, cache of {CACHE}"]
        + [f"{p.nio_bytes_after / mb:.2f}" for p in points]
        + ["0", f"{held * min(CACHE, TARGET_ROOMS) / mb:.1f}"],
        [f"rooms in nio's memory, cache of {CACHE}"]
        + [str(p.nio_rooms_after) for p in points]
        + ["", ""],
        ["process RSS, MB"] + [f"{p.rss_mb:.0f}" for p in points] + ["", ""],
    ]
    if grown_per_room is not None:
        rows.append(
            ["RSS growth per room made (1st segment)"]
            + [f"{grown_per_room:.0f} B"]
            + ["" for _ in points[1:]]
            + [f"{grown_per_room * 1000 / mb:.2f}", f"{grown_per_room * TARGET_ROOMS / mb:.0f}"]
        )
    timed: list[tuple[str, Any, str]] = [
        ("busy room: !aide PUT → reply sent, ms", lambda p: med(p.latency) * 1000, ".0f"),
        ("/sync incremental, 1 room changed, ms", lambda p: med(p.sync_busy) * 1000, ".0f"),
        ("/sync incremental, nothing new, ms", lambda p: med(p.sync_quiet) * 1000, ".0f"),
        ("control: same, account in 1 room, ms", lambda p: med(p.sync_control) * 1000, ".0f"),
        (
            "nothing new / control (load removed)",
            lambda p: med([q / c for q, c in zip(p.sync_quiet, p.sync_control, strict=True)]),
            ".2f",
        ),
        ("restart → first event answered, s", lambda p: med(p.restart_answered), ".2f"),
        ("restart → first /sync returned, s", lambda p: med(p.restart_first_sync), ".2f"),
    ]
    for label, get, fmt in timed:
        values = [(float(p.rooms), float(get(p))) for p in points]
        _, slope, at = fit(values, TARGET_ROOMS)
        rows.append(
            [label, *(format(v, fmt) for _, v in values), f"{slope * 1000:+.2f}", format(at, fmt)]
        )
    _, slope, at = fit([(float(p.rooms), p.state_check_s * 1000) for p in points], TARGET_ROOMS)
    rows.append(
        [
            "start-up state check, ms per open room",
            *(f"{p.state_check_s * 1000:.1f}" for p in points),
            f"{slope * 1000:+.2f}",
            f"{at:.1f}",
        ]
    )
    initial = [(float(p.rooms), p.initial_s) for p in points if p.initial_s is not None]
    if initial:
        _, slope, at = fit([(x, y) for x, y in initial if y is not None], TARGET_ROOMS)
        cells = [f"{p.initial_s:.1f}" if p.initial_s is not None else "–" for p in points]
        rows.append(["initial /sync, bot filter, s", *cells, f"{slope * 1000:+.2f}", f"{at:.0f}"])
        sizes = [f"{p.initial_mb:.1f}" if p.initial_mb is not None else "–" for p in points]
        rows.append(["initial /sync, bot filter, MB", *sizes, "", ""])
    return table(
        f"Room-count probe (medians; the last two columns: slope per 1,000 rooms and the "
        f"line at {TARGET_ROOMS:,}; {machine()})",
        ["measure", *(f"{p.rooms} rooms" for p in points), "/1,000", f"{TARGET_ROOMS:,}"],
        rows,
    )


@bound(BUDGET_S + 900)
async def test_room_count_probe(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    report(
        f"\nRoom-count probe: checkpoints {CHECKPOINTS}, {SAMPLES} samples, budget "
        f"{BUDGET_S:.0f} s; {machine()}"
    )
    began = time.perf_counter()
    points: list[Checkpoint] = []
    grown_per_room: float | None = None
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        invitee = await clients.user("invitee")
        aidant, dm = await aidant_in_direct_chat(runner, clients, WAIT_S)
        localpart = runner.user_id.split(":")[0].removeprefix("@")
        probe = ProbeDevice(synapse, await synapse.login(localpart, runner.password))
        # The control: an account in one room, its own device, same filter.
        control = ProbeDevice(synapse, await clients.user("lone"))
        async with control.http.post(
            f"{synapse.base_url}/_matrix/client/v3/createRoom", json={"preset": "private_chat"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        try:
            _, _, probe.since = await probe.sync(None)
            _, _, control.since = await control.sync(None)
            assert runner.app is not None
            base = len(await runner.app.gateway.joined_rooms())
            gc.collect()
            rss_start = rss_bytes()
            objects_start = object_counts()
            made = 0
            all_rooms: list[str] = []
            rate = 0.0  # rooms per second, measured
            overhead = 0.0  # seconds of measures per checkpoint, measured
            for target in CHECKPOINTS:
                left = BUDGET_S - (time.perf_counter() - began)
                if rate and (target - made) / rate + overhead * 1.5 > left:
                    report(
                        f"checkpoint {target} skipped: ~{(target - made) / rate + overhead:.0f}"
                        f" s needed at {rate:.1f} rooms/s, {left:.0f} s left in the budget"
                    )
                    break
                if runner.app is None:
                    await runner.start()
                assert runner.app is not None
                # HEAD's behaviour while the rooms come: every room stays in nio's memory.
                # Every probe room but the busy one stands for a demande room.
                runner.app.gateway.room_cache = None
                runner.app.gateway.forgettable = lambda room_id: room_id != dm
                started = time.perf_counter()
                report(f"checkpoint {target}: creating {target - made} rooms; {machine()}")
                all_rooms += await create_rooms(runner, invitee, made + 1, target - made)
                await aide_answered(aidant, dm, runner.user_id, max(WAIT_S, target * 0.2))
                joined = len(await runner.app.gateway.joined_rooms())
                assert joined == base + target, (joined, base, target)
                rate = (target - made) / (time.perf_counter() - started)
                report(f"  {joined} rooms joined, {rate:.1f} rooms/s; {machine()}")
                measured = time.perf_counter()
                point = Checkpoint(rooms=joined, load=machine())
                gc.collect()
                point.rss_mb = rss_bytes() / 2**20
                if made == 0:
                    grown_per_room = (rss_bytes() - rss_start) / target
                    # Where it went: the object types that grew most, per room made.
                    grown = object_counts() - objects_start
                    top = ", ".join(f"{k} {v / target:.1f}" for k, v in grown.most_common(12))
                    report(f"  objects grown per room (gc-tracked types): {top}")
                made = target
                point.nio_rooms_before, point.nio_bytes_before = nio_rooms(runner)
                # After: the same bot, its cache applied.
                gateway = runner.app.gateway
                gateway.room_cache = CACHE
                gateway.forget_idle_rooms()
                point.nio_rooms_after, point.nio_bytes_after = nio_rooms(runner)
                report(
                    f"  memory: RSS {point.rss_mb:.0f} MB; nio rooms {point.nio_rooms_before}"
                    f" = {point.nio_bytes_before / 2**20:.1f} MB"
                    f" ({point.bytes_per_room:.0f} B/room); with the cache "
                    f"{point.nio_rooms_after} = {point.nio_bytes_after / 2**20:.1f} MB"
                )
                await busy_room_samples(runner, aidant, dm, probe, point, control)
                report(
                    f"  busy room: reply sent median "
                    f"{med(point.latency) * 1000:.0f} ms; /sync incremental "
                    f"{med(point.sync_busy) * 1000:.0f} ms (1 room changed), "
                    f"{med(point.sync_quiet) * 1000:.0f} ms (nothing); {machine()}"
                )
                point.state_check_s = await state_check(runner, all_rooms[-STATE_SAMPLE:])
                report(
                    f"  start-up state check: {point.state_check_s * 1000:.1f} ms per open "
                    f"room ({STATE_CHECK_CONCURRENCY} at a time); {machine()}"
                )
                if target <= INITIAL_MAX:
                    took, size, _ = await probe.sync(None)
                    point.initial_s, point.initial_mb = took, size / 2**20
                    report(
                        f"  initial /sync (bot filter): {took:.2f} s, {size / 2**20:.1f} MB; "
                        f"{machine()}"
                    )
                await runner.stop()
                for _ in range(RESTARTS):
                    r = await timed_restart(runner, aidant, dm)
                    await runner.stop()
                    point.restart_answered.append(max(r.reply_sent, r.reply_received))
                    point.restart_first_sync.append(r.first_sync)
                answered = ", ".join(f"{s:.2f}" for s in point.restart_answered)
                report(f"  restart → answered: {answered} s; {machine()}")
                points.append(point)
                overhead = time.perf_counter() - measured
                report(summary(points, grown_per_room))
        finally:
            await probe.close()
            await control.close()
    assert points, "no checkpoint fitted in the budget"
    for p in points:
        report(f"  {p.rooms} rooms measured at: {p.load}")
