"""Benchmark helpers: figures, tables, verdicts, and a read-only view of the bot's database.

Benchmarks run on purpose (`make bench`, or `.venv/bin/pytest -s tests/bench/...`), never in
the normal suite. They *report*: a missed target prints MISS, it does not fail the run.
What does fail the run is a wrong result (a room not ready, a reply not received), or a
wait that exceeds its bound.

The session's real Synapse (`synapse`) and the E2EE client pool (`clients`) come from
`tests/conftest.py`, which pytest applies to this folder too.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nio
import pytest

from bot.devserver import LocalSynapse, RegisteredUser
from bot.matrix.gateway import SYNC_FILTER
from tests.support import matrix
from tests.support.matrix import WaitTimeout


def env_int(name: str, default: int) -> int:
    """A size knob of a benchmark (e.g. BENCH_ROOMS=100 for a quick try)."""
    value = os.environ.get(name)
    return int(value) if value else default


# -- figures -----------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p95: float
    minimum: float
    maximum: float

    def ms(self) -> list[str]:
        return [
            str(self.n),
            f"{self.median * 1000:.0f}",
            f"{self.p95 * 1000:.0f}",
            f"{self.minimum * 1000:.0f}",
            f"{self.maximum * 1000:.0f}",
        ]


def p95(samples: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (with 30 samples: the 29th smallest)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarize(samples: Sequence[float]) -> Summary:
    assert samples, "no samples"
    return Summary(
        n=len(samples),
        median=statistics.median(samples),
        p95=p95(samples),
        minimum=min(samples),
        maximum=max(samples),
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    rule = "-" * len(line(cells[0]))
    return "\n".join([f"\n{title}", rule, line(cells[0]), rule, *map(line, cells[1:]), rule])


def bound(seconds: float) -> pytest.MarkDecorator:
    """A benchmark's own time limit, sized from its knobs (not the suite's 300 s): on a
    loaded 2-core machine a benchmark is slower, not wrong; a wait that exceeds the
    bound is what fails it."""
    return pytest.mark.timeout(int(seconds))


def machine() -> str:
    """The shared machine's state, printed with every figure: other jobs skew them."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.1f} (1 min) / {five:.1f} (5 min)"


def report(text: str) -> None:
    """Printed as it comes (`-s`), so a long benchmark shows where it is."""
    print(text, flush=True)


class Progress:
    """`what: 300/1000 (42 s, ~98 s left)`, printed every `every` steps."""

    def __init__(self, what: str, total: int, every: int) -> None:
        self.what = what
        self.total = total
        self.every = every
        self.done = 0
        self.started = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            spent = time.perf_counter() - self.started
            left = spent / self.done * (self.total - self.done)
            report(f"  {self.what}: {self.done}/{self.total} ({spent:.0f} s, ~{left:.0f} s left)")


# -- the aidant's side ---------------------------------------------------------------


async def reply_after(
    client: nio.AsyncClient, room_id: str, sender: str, after: int, bound: float = 30.0
) -> str:
    """The first decrypted message from `sender` in the room beyond the `after` first ones."""
    box = matrix.inbox(client)

    def replies() -> list[Any]:
        return [e for e in box.events(room_id) if e.sender == sender]

    await matrix.sync_until(client, lambda: len(replies()) > after, bound, f"reply from {sender}")
    body: str = replies()[after].body
    return body


async def keep_syncing(client: nio.AsyncClient, stop: asyncio.Event) -> None:
    """A member's client, as Element runs it: always syncing (its inbox collects the
    messages), with the key housekeeping after each sync, until `stop` is set."""
    while not stop.is_set():
        resp = await client.sync(timeout=1000, full_state=False)
        if isinstance(resp, nio.SyncResponse):
            if client.should_upload_keys:
                await client.keys_upload()
            if client.should_query_keys:
                await client.keys_query()
            if client.should_claim_keys:
                await client.keys_claim(client.get_users_for_key_claiming())
            await client.send_to_device_messages()
        else:
            await asyncio.sleep(0.5)


# -- the bot's database, seen from outside -----------------------------------------


class BotDb:
    """A read-only SQLite connection to the bot's database.

    The bot writes in WAL mode, so this reader never blocks it and sees each commit as soon
    as it is made. Queries take tens of microseconds: polling every 2 ms costs the shared
    event loop little, and the benchmarks poll the same way while timing the reference.
    """

    def __init__(self, database_url: str) -> None:
        prefix = "sqlite+aiosqlite:///"
        assert database_url.startswith(prefix), "the benchmarks read the bot's SQLite file"
        path = Path(database_url.removeprefix(prefix))
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def close(self) -> None:
        self._db.close()

    def one(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
        return row

    def all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return list(self._db.execute(sql, args).fetchall())

    def last_demande_id(self) -> int:
        row = self.one("SELECT max(id) FROM demandes")
        return int(row[0]) if row and row[0] is not None else 0

    def ready_after(self, last_id: int) -> bool:
        row = self.one(
            "SELECT creation_step FROM demandes WHERE id > ? ORDER BY id DESC LIMIT 1", last_id
        )
        return row is not None and row[0] == "ready"

    def message_sent(self, txn_id: str) -> bool:
        row = self.one("SELECT sent_at FROM outbox_messages WHERE txn_id = ?", txn_id)
        return row is not None and row[0] is not None


POLL_S = 0.002


async def poll_until(check: Callable[[], bool], bound: float, what: str) -> float:
    """Call `check()` every 2 ms until true; returns the `perf_counter` when it was seen."""
    deadline = time.perf_counter() + bound
    while True:
        if check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise WaitTimeout(f"still waiting after {bound} s for {what}")
        await asyncio.sleep(POLL_S)


# -- Synapse's `/sync`, timed from a second device -------------------------------------


class ProbeDevice:
    """A second device of the bot account that times raw `/sync` requests."""

    def __init__(self, synapse: LocalSynapse, login: RegisteredUser) -> None:
        self.synapse = synapse
        self.login = login
        self.filter = json.dumps(SYNC_FILTER, separators=(",", ":"))
        self.since: str | None = None
        self.initial_syncs = 0
        self.http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {login.access_token}"},
            timeout=aiohttp.ClientTimeout(total=3600),
        )

    async def sync(self, since: str | None) -> tuple[float, int, str]:
        """(seconds, response bytes, next_batch) of one `/sync` with the bot's filter.

        Synapse keeps a response for 2 minutes under (user, timeout, since, filter,
        device…): each initial sync gets a timeout of its own (never waited for without
        `since`), so that it is computed, not served from that cache."""
        query = {"filter": self.filter, "timeout": "0"}
        if since is not None:
            query["since"] = since
        else:
            self.initial_syncs += 1
            query["timeout"] = str(self.initial_syncs)
        started = time.perf_counter()
        async with self.http.get(
            f"{self.synapse.base_url}/_matrix/client/v3/sync", params=query
        ) as resp:
            body = await resp.read()
            assert resp.status == 200, body[:300]
        took = time.perf_counter() - started
        return took, len(body), str(json.loads(body)["next_batch"])

    async def close(self) -> None:
        async with self.http.post(f"{self.synapse.base_url}/_matrix/client/v3/logout") as resp:
            assert resp.status == 200, await resp.text()
        await self.http.close()
