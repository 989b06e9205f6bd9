"""Scale run (issue 15, item 1): a national directory, then N demandes replayed end to end.

Run on purpose (never in `make test`: `pyproject.toml` does not collect tests/bench):

    APLUS_SCALE_DEMANDES=2000 .venv/bin/pytest -s -p no:cacheprovider -p no:logging \\
        tests/bench/test_bench_scale.py

Quick try: `APLUS_SCALE_DEMANDES=60 APLUS_SCALE_AGENTS=800` (checkpoints scaled down to
a quarter, a half and all of the demandes unless `APLUS_SCALE_CHECKPOINTS` says).

What is real: the bot is a real `aplus run` process (its own pid: its CPU and RSS are its
own, not the test's) on a fresh PostgreSQL database of the suite's helper
(`tests/support/databases.py`), with the email bridge on (the relay sink of
`tests/support/smtp.py`, the bot's own listener for replies); the session's Synapse; nio
E2EE clients for a pool of aidants and instructeurs. The homeserver is the session's one:
**SQLite, without the guard module** — the test harness has no session Synapse on
PostgreSQL with the module (`tests/support/deploy.py` starts the deploy template's Synapse
on PostgreSQL for the deploy tests only, with production rate limits and no shared-secret
registration flow the pool needs). So Synapse's figures here are those of a SQLite
Synapse without the module.

The directory (`APLUS_SCALE_AGENTS`, 8,000): ~40 % aidants in France Services groups of
each of the 101 départements, the others instructeurs (about one in eight by email only,
one in ten also responsable) in one group per département and organisation (14 operator
organisations). It is written as the Administration+ CSV an operator has and imported by
the product's own command, `aplus directory import FILE.csv` (all lines in one
transaction; it greets nobody and invites no one, unlike `!import-annuaire` in the admin
room, which would welcome 8,000 agents). Only the pool has Matrix accounts: the demandes
go to "live" groups (one per département and organisation, never generated in bulk)
whose instructeurs are the pool's 1, 2 or 3 Matrix instructeurs and one email-only
instructeur; the other agents' Matrix IDs are never invited, so they need no account.

Each demande (`APLUS_SCALE_CONCURRENCY` at once, one aidant per worker): the form in the
aidant's direct chat, the recap, `!confirmer` (timed to the database row `ready`), the
instructeurs and the aidant join, `!jemenoccupe`, 5–15 messages in turn from the aidant
and the instructeurs, each waited for at the relay (the email to the email-only
instructeur), about one demande in five (`APLUS_SCALE_EMAIL_SHARE`) with one of those
messages an email reply through the listener (timed from its 250 to the aidant's client
having decrypted it), then `!traitee` and `!clore oui` (waited for in the database).
Meanwhile a second device of the bot account times Synapse's incremental `/sync` with
the bot's filter every 2 s: the bot's sync round trip as the homeserver serves it.

At each checkpoint: demandes per minute over the segment, p50/p95/max of every latency,
CPU seconds per demande of Synapse and of the bot (`/proc/<pid>/stat`), the bot's RSS
(`/proc/<pid>/status`), `pg_database_size`, the load average. Afterwards everything is
counted, not sampled: each member's message in exactly one email (by its marker), each
Message-ID once at the relay, each email reply once in the room (decrypted by the
aidant), nothing left unsent in the bot's outboxes, every demande closed. Then the
per-demande cost must be flat between checkpoints: RSS slope and the p95s of each
segment within 25 % of the previous one (with a noise floor, below).

Knobs (environment): `APLUS_SCALE_DEMANDES` (2000), `APLUS_SCALE_CHECKPOINTS`
(500,1000,2000), `APLUS_SCALE_AGENTS` (8000), `APLUS_SCALE_CONCURRENCY` (4),
`APLUS_SCALE_AIDANTS` (10, at least the concurrency), `APLUS_SCALE_INSTRUCTEURS` (10),
`APLUS_SCALE_EMAIL_SHARE` (0.2), `APLUS_SCALE_SEED` (1); time bounds:
`APLUS_SCALE_WAIT_S` (120, any single wait), `APLUS_SCALE_SETUP_S` (1200, accounts,
import and start), `APLUS_SCALE_S_PER_DEMANDE` (60: a segment's bound is 300 s plus that
many seconds per demande divided by the concurrency), `APLUS_SCALE_SETTLE_S` (600, the
bot's queues empty and the final count); noise floors of the flatness checks:
`APLUS_SCALE_RSS_FLOOR_KB` (8 KB per demande) and `APLUS_SCALE_P95_FLOOR_MS` (50 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import random
import re
import resource
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import asyncpg
import nio

from bot.devserver import LocalSynapse
from bot.policy_loader import load_policies
from bot.settings import REPO_POLICIES_DIR
from tests.bench.conftest import (
    ProbeDevice,
    bound,
    env_int,
    keep_syncing,
    machine,
    p95,
    report,
    table,
    verdict,
)
from tests.support import databases, matrix
from tests.support import process as proc
from tests.support.bot import filled_form, open_direct_chat
from tests.support.email import bridged, email_section, relay
from tests.support.smtp import Received, RelaySink, build_reply, reply_to, send_mail

DEMANDES = env_int("APLUS_SCALE_DEMANDES", 2000)
_CHECKPOINTS = os.environ.get("APLUS_SCALE_CHECKPOINTS", "")
if _CHECKPOINTS.strip():
    CHECKPOINTS = sorted({int(n) for n in _CHECKPOINTS.split(",") if n.strip()})
elif DEMANDES == 2000:
    CHECKPOINTS = [500, 1000, 2000]
else:
    CHECKPOINTS = sorted({max(1, DEMANDES // 4), max(1, DEMANDES // 2), DEMANDES})
CHECKPOINTS = [c for c in CHECKPOINTS if c <= DEMANDES] or [DEMANDES]
if CHECKPOINTS[-1] != DEMANDES:
    CHECKPOINTS.append(DEMANDES)
AGENTS = env_int("APLUS_SCALE_AGENTS", 8000)
CONCURRENCY = env_int("APLUS_SCALE_CONCURRENCY", 4)
AIDANTS = max(env_int("APLUS_SCALE_AIDANTS", 10), CONCURRENCY)
INSTRUCTEURS = env_int("APLUS_SCALE_INSTRUCTEURS", 10)
EMAIL_SHARE = float(os.environ.get("APLUS_SCALE_EMAIL_SHARE", "0.2"))
SEED = env_int("APLUS_SCALE_SEED", 1)
WAIT_S = float(env_int("APLUS_SCALE_WAIT_S", 120))
SETUP_S = float(env_int("APLUS_SCALE_SETUP_S", 1200))
S_PER_DEMANDE = float(env_int("APLUS_SCALE_S_PER_DEMANDE", 60))
SETTLE_S = float(env_int("APLUS_SCALE_SETTLE_S", 600))
RSS_FLOOR_B = env_int("APLUS_SCALE_RSS_FLOOR_KB", 8) * 1024
P95_FLOOR_S = env_int("APLUS_SCALE_P95_FLOOR_MS", 50) / 1000
FLAT = 1.25  # a segment's per-demande cost may be 25 % above the previous one's
MESSAGES = (5, 15)  # per demande, inclusive
SYNC_PROBE_EVERY_S = 2.0
TARGET_PER_MIN = 12.0  # 10 × the national business-hours average (1.2/min)
NATIONAL_PER_MONTH = 12_000
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The live groups' (département, organisation as the aidant writes it): none of these
# organisations requires the NIR, so one form fits them all. Never generated in bulk.
LIVE_PAIRS = [
    ("95", "caf", "CAF"),
    ("13", "france_travail", "France Travail"),
    ("59", "dgfip", "DGFiP"),
    ("69", "mdph", "MDPH"),
    ("33", "ccas", "CCAS"),
    ("35", "caf", "CAF"),
    ("44", "france_travail", "France Travail"),
    ("67", "dgfip", "DGFiP"),
]
BULK_ORGANISATIONS = [
    ("caf", "CAF"),
    ("cpam", "CPAM"),
    ("msa", "MSA"),
    ("france_travail", "France Travail"),
    ("carsat", "CARSAT"),
    ("dgfip", "DGFiP"),
    ("mdph", "MDPH"),
    ("ccas", "CCAS"),
    ("conseil_departemental", "Conseil départemental"),
    ("prefecture", "Préfecture"),
    ("urssaf", "URSSAF"),
    ("ants", "ANTS"),
    ("mission_locale", "Mission locale"),
    ("anah", "ANAH"),
]
FIRST = ["Camille", "Nadia", "Louis", "Inès", "Paul", "Awa", "Hugo", "Léa", "Omar", "Julie"]
LAST = ["Martin", "Bernard", "Robert", "Richard", "Durand", "Moreau", "Laurent", "Garcia"]
HEADER = ["Prénom", "Nom", "Email", "Matrix", "Instructeur", "Responsable", "Territoire"]
HEADER += ["Organisation", "Groupe", "BAL"]
MARKER = re.compile(r"(?:Message|Réponse) (scl\d{7})\.")


# -- the national directory -------------------------------------------------------------


@dataclass
class LiveGroup:
    departement: str
    organisation: str  # as written in the form
    name: str
    instructeurs: list[nio.AsyncClient]
    email_only: str  # the group's email-only instructeur


def directory_csv(
    agents: int, aidants: list[str], instructeurs: list[str], server: str
) -> tuple[str, list[tuple[str, str, str, list[int], str]], dict[str, int]]:
    """The Administration+ CSV of a national directory of `agents` lines: the pool's
    accounts in their live groups, the rest generated. Returns the text, the live groups
    (département, organisation, name, pool indexes, email-only address) and counts."""
    rng = random.Random(SEED)
    departements = sorted(load_policies(REPO_POLICIES_DIR).departements)
    assert len(departements) == 101, len(departements)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(HEADER)
    counts: Counter[str] = Counter()
    groups: set[str] = set()
    yes = {True: "oui", False: "non"}

    def row(
        who: tuple[str, str],
        email: str,
        mxid: str,
        roles: tuple[bool, bool],
        where: tuple[str, str, str],
    ) -> None:
        """One line: (first, last name), contacts, (instructeur, responsable) and
        (département, organisation, group)."""
        dep, org, group = where
        groups.add(group)
        writer.writerow([*who, email, mxid, yes[roles[0]], yes[roles[1]], dep, org, group, ""])

    # The pool: its aidants in one France Services group; its instructeurs in live groups
    # of 1, 2, 3, 1, 2, 3… members (the demande is routed to all of a group's members).
    for i, user_id in enumerate(aidants):
        where = ("95", "France Services", "France Services 95 banc d'essai")
        row(("Aidant", f"Pool {i}"), "", user_id, (False, False), where)
        counts["aidants"] += 1
    live: list[tuple[str, str, str, list[int], str]] = []
    taken = 0
    sizes = [1, 2, 3]
    while taken < len(instructeurs):
        k = len(live)
        assert k < len(LIVE_PAIRS), "more live groups than LIVE_PAIRS: fewer instructeurs"
        size = min(sizes[k % 3], len(instructeurs) - taken)
        dep, org_id, org_name = LIVE_PAIRS[k]
        name = f"{org_name} {dep} banc d'essai"
        members = list(range(taken, taken + size))
        for m in members:
            row(
                ("Instructeur", f"Pool {m}"),
                "",
                instructeurs[m],
                (True, False),
                (dep, org_name, name),
            )
        email_only = f"sophie.{k}@{org_id.replace('_', '-')}{dep.lower()}.example.test"
        row(("Sophie", f"Courriel {k}"), email_only, "", (True, False), (dep, org_name, name))
        counts["instructeurs"] += size + 1
        counts["email-only instructeurs"] += 1
        live.append((dep, org_name, name, members, email_only))
        taken += size
    live_pairs = {(dep, org) for dep, org, *_ in live}

    left = agents - sum(counts[k] for k in ("aidants", "instructeurs"))
    n_aidants = max(0, round(agents * 0.4) - counts["aidants"])
    n_instr = max(0, left - n_aidants)
    for i in range(n_aidants):
        dep = departements[i % 101]
        group = f"France Services {dep} n°{(i // 101) // 8 + 1}"
        who = (rng.choice(FIRST), rng.choice(LAST))
        email = f"fs{i:05d}@fs{dep.lower()}.example.test"
        row(who, email, f"@fs-{i:05d}:{server}", (False, False), (dep, "France Services", group))
        counts["aidants"] += 1
    pairs = [
        (dep, org_id, name)
        for dep in departements
        for org_id, name in BULK_ORGANISATIONS
        if (dep, name) not in live_pairs
    ]
    for i in range(n_instr):
        dep, org_id, name = pairs[i % len(pairs)]
        who = (rng.choice(FIRST), rng.choice(LAST))
        email = f"in{i:05d}@{org_id.replace('_', '-')}{dep.lower()}.example.test"
        by_email = i % 8 == 7
        mxid = "" if by_email else f"@in-{i:05d}:{server}"
        row(who, email, mxid, (True, i % 10 == 0), (dep, name, f"{name} {dep}"))
        counts["instructeurs"] += 1
        counts["email-only instructeurs"] += by_email
    counts["groups"] = len(groups)
    return out.getvalue(), live, dict(counts)


# -- what the relay received, parsed once per email ------------------------------------


@dataclass
class MailIndex:
    sink: RelaySink
    done: int = 0
    markers: dict[str, list[tuple[float, tuple[str, ...]]]] = field(default_factory=dict)
    message_ids: Counter[str] = field(default_factory=Counter)
    # (recipient, reference) → the first email of the demande to them (the dossier).
    dossiers: dict[tuple[str, str], Received] = field(default_factory=dict)
    parse_s: float = 0.0

    def update(self) -> None:
        started = time.perf_counter()
        for mail in self.sink.messages[self.done :]:
            msg = BytesParser(policy=policy.default).parsebytes(mail.data)
            assert isinstance(msg, EmailMessage)
            self.message_ids[str(msg["Message-ID"])] += 1
            subject = str(msg["Subject"])
            rcpts = tuple(r.lower() for r in mail.rcpt_tos)
            found = re.search(r"Demande (\S+)", subject)
            if found:
                for rcpt in rcpts:
                    self.dossiers.setdefault((rcpt, found.group(1)), mail)
            body = msg.get_body(preferencelist=("plain",))
            text = str(body.get_content()) if body is not None else ""
            for marker in MARKER.findall(text):
                self.markers.setdefault(marker, []).append((mail.at, rcpts))
        self.done = len(self.sink.messages)
        self.parse_s += time.perf_counter() - started


# -- the bot's process, database and homeserver, from outside ---------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_b(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def synapse_pid(synapse: LocalSynapse) -> int:
    process = synapse._process  # the session's child process (bot/devserver.py)
    assert process is not None and process.poll() is None, "the session's Synapse is not running"
    return process.pid


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def until(predicate: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Every wait of the run: bounded (`APLUS_SCALE_WAIT_S`), polling every 10 ms (the
    clients sync on their own: nothing here syncs)."""
    await matrix.wait_for(predicate, WAIT_S, what, interval=0.01)


# -- the run ---------------------------------------------------------------------------


@dataclass
class Samples:
    confirm: list[float] = field(default_factory=list)
    to_email: list[float] = field(default_factory=list)
    reply: list[float] = field(default_factory=list)
    sync: list[float] = field(default_factory=list)

    def cut(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}


@dataclass
class Point:
    demandes: int
    wall_s: float
    per_min: float
    bot_cpu_s: float
    synapse_cpu_s: float
    driver_cpu_s: float
    rss: int
    db_bytes: int
    load: tuple[float, float, float]
    segment: dict[str, list[float]]


@dataclass
class Scale:
    synapse: LocalSynapse
    files: proc.BotFiles
    pool: asyncpg.Pool
    sink: RelaySink
    mails: MailIndex
    listen: tuple[str, int]
    live: list[LiveGroup]
    aidant_ids: dict[str, int]  # Matrix ID → agent id
    bot_pid: int
    samples: Samples = field(default_factory=Samples)
    # marker → the email-only address it must reach, exactly once.
    to_email: dict[str, str] = field(default_factory=dict)
    # (room, marker): an email reply, expected once in the room.
    to_room: list[tuple[str, str]] = field(default_factory=list)
    aidant_of_room: dict[str, nio.AsyncClient] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    started: int = 0
    done: int = 0
    _markers: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))

    @property
    def bot_id(self) -> str:
        return self.files.user_id

    def marker(self) -> str:
        self._markers += 1
        return f"scl{self._markers:07d}"

    async def send(self, client: nio.AsyncClient, room_id: str, body: str) -> None:
        """One send at a time per client (its Megolm sessions and key claims are its own)."""
        assert client.user_id
        async with self.locks.setdefault(client.user_id, asyncio.Lock()):
            await matrix.send_text(client, room_id, body)

    def bot_replies(self, client: nio.AsyncClient, room_id: str) -> list[str]:
        return [e.body for e in matrix.inbox(client).events(room_id) if e.sender == self.bot_id]

    async def demande(self, aidant: nio.AsyncClient, dm: str, i: int) -> None:
        group = self.live[i % len(self.live)]
        assert aidant.user_id
        before = len(self.bot_replies(aidant, dm))

        def recap() -> str | None:
            return next(
                (r for r in self.bot_replies(aidant, dm)[before:] if "!confirmer" in r), None
            )

        await self.send(
            aidant,
            dm,
            filled_form(
                territoire=group.departement,
                organismes=group.organisation,
                objet=f"Blocage du dossier, demande de banc d'essai n°{i}",
            ),
        )
        await until(lambda: recap() is not None, f"the recap of demande {i}")
        after_recap = len(self.bot_replies(aidant, dm))
        async with self.pool.acquire() as db:
            last = await db.fetchval(
                "SELECT coalesce(max(id), 0) FROM demandes WHERE aidant_agent_id = $1",
                self.aidant_ids[aidant.user_id],
            )
        row: Any = None

        async def ready() -> bool:
            nonlocal row
            async with self.pool.acquire() as db:
                row = await db.fetchrow(
                    "SELECT id, reference, room_id, creation_step FROM demandes "
                    "WHERE aidant_agent_id = $1 AND id > $2 ORDER BY id LIMIT 1",
                    self.aidant_ids[aidant.user_id],
                    last,
                )
            return row is not None and row["creation_step"] == "ready"

        t0 = time.perf_counter()
        await self.send(aidant, dm, "!confirmer")
        await matrix.wait_for(ready, WAIT_S, f"demande {i} ready", interval=0.005)
        self.samples.confirm.append(time.perf_counter() - t0)
        room_id, reference = str(row["room_id"]), str(row["reference"])
        self.references.append(reference)
        self.aidant_of_room[room_id] = aidant
        await until(
            lambda: any("ouverte" in r for r in self.bot_replies(aidant, dm)[after_recap:]),
            f"« ouverte » for {reference}",
        )

        members = [aidant, *group.instructeurs]
        for client in members:
            resp = await client.join(room_id)
            assert isinstance(resp, nio.JoinResponse), resp
        for client in members:
            assert client.user_id
            await until(
                lambda c=client: matrix.has_joined(c, room_id, c.user_id), f"join {reference}"
            )
        first = group.instructeurs[0]
        await self.send(first, room_id, "!jemenoccupe")

        count = self.rng.randint(*MESSAGES)
        by_email = self.rng.random() < EMAIL_SHARE
        email_at = self.rng.randrange(count) if by_email else -1
        for j in range(count):
            marker = self.marker()
            if j == email_at:
                await self.email_reply(group, reference, room_id, aidant, marker)
                continue
            sender = aidant if j % 2 == 0 else group.instructeurs[(j // 2) % len(members[1:])]
            self.to_email[marker] = group.email_only
            t0 = time.perf_counter()
            await self.send(sender, room_id, f"Message {marker}.")

            def emailed(m: str = marker) -> bool:
                self.mails.update()
                return m in self.mails.markers

            await until(emailed, f"the email of {marker}")
            self.samples.to_email.append(self.mails.markers[marker][0][0] - t0)

        await self.send(first, room_id, "!traitee")
        await self.send(aidant, room_id, "!clore oui")

        async def closed() -> bool:
            async with self.pool.acquire() as db:
                status = await db.fetchval("SELECT status FROM demandes WHERE id = $1", row["id"])
            return bool(status == "cloturee")

        await matrix.wait_for(closed, WAIT_S, f"{reference} closed", interval=0.05)

    async def email_reply(
        self, group: LiveGroup, reference: str, room_id: str, aidant: nio.AsyncClient, marker: str
    ) -> None:
        """The group's email-only instructeur answers the dossier email, by the listener."""
        key = (group.email_only, reference)

        def dossier_arrived() -> bool:
            self.mails.update()
            return key in self.mails.dossiers

        await until(dossier_arrived, f"the dossier email of {reference}")
        dossier = self.mails.dossiers[key]
        message = build_reply(dossier, sender=group.email_only, text=f"Réponse {marker}.")
        host, port = self.listen
        code, text = await send_mail(
            host, port, message, rcpt=reply_to(dossier), mail_from=group.email_only
        )
        t0 = time.perf_counter()
        assert code == 250, (code, text)
        self.to_room.append((room_id, marker))

        def decrypted() -> bool:
            return any(marker in e.body for e in bridged(aidant, room_id, self.bot_id))

        await until(decrypted, f"the email reply {marker} decrypted by the aidant")
        self.samples.reply.append(time.perf_counter() - t0)

    async def worker(self, aidant: nio.AsyncClient, dm: str, target: int) -> None:
        while self.started < target:
            i = self.started
            self.started += 1
            await self.demande(aidant, dm, i)
            self.done += 1
            if self.done % 25 == 0 or self.done == target:
                report(f"  demandes: {self.done}/{DEMANDES}; {machine()}")

    async def measure(self, demandes: int, wall_s: float, cut: dict[str, int]) -> Point:
        async with self.pool.acquire() as db:
            size = int(await db.fetchval("SELECT pg_database_size(current_database())"))
        own = resource.getrusage(resource.RUSAGE_SELF)
        return Point(
            demandes=demandes,
            wall_s=wall_s,
            per_min=0.0,
            bot_cpu_s=cpu_s(self.bot_pid),
            synapse_cpu_s=cpu_s(synapse_pid(self.synapse)),
            driver_cpu_s=own.ru_utime + own.ru_stime,
            rss=rss_b(self.bot_pid),
            db_bytes=size,
            load=os.getloadavg(),
            segment={k: list(v[cut[k] :]) for k, v in vars(self.samples).items()},
        )


async def probe_syncs(probe: ProbeDevice, samples: list[float], stop: asyncio.Event) -> None:
    """The bot account's incremental `/sync` (bot's filter, timeout 0), every 2 s."""
    _, _, probe.since = await probe.sync(None)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SYNC_PROBE_EVERY_S)
        took, _, probe.since = await probe.sync(probe.since)
        samples.append(took)


def ms3(values: list[float]) -> str:
    if not values:
        return "–"
    ordered = [v * 1000 for v in values]
    return f"{statistics.median(ordered):.0f} / {p95(ordered):.0f} / {max(ordered):.0f}"


def segment_table(points: list[Point], base: Point) -> str:
    rows = []
    previous = base
    for point in points:
        n = point.demandes - previous.demandes
        db_grown = point.db_bytes - previous.db_bytes
        rows.append(
            [
                f"{previous.demandes}→{point.demandes}",
                f"{point.per_min:.1f}",
                ms3(point.segment["confirm"]),
                ms3(point.segment["to_email"]),
                ms3(point.segment["reply"]),
                ms3(point.segment["sync"]),
                f"{(point.synapse_cpu_s - previous.synapse_cpu_s) / n:.2f}",
                f"{(point.bot_cpu_s - previous.bot_cpu_s) / n:.2f}",
                f"{(point.driver_cpu_s - previous.driver_cpu_s) / n:.2f}",
                f"{point.rss / 2**20:.0f} ({(point.rss - previous.rss) / n / 1024:+.0f} KB)",
                f"{point.db_bytes / 2**20:.0f} ({db_grown / n / 1024:.0f} KB)",
                "/".join(f"{x:.1f}" for x in point.load),
            ]
        )
        previous = point
    header = [
        "segment",
        "dem./min",
        "!confirmer→ready p50/p95/max ms",
        "message→relay",
        "reply 250→decrypted",
        "bot /sync",
        "Synapse CPU s/dem.",
        "bot CPU s/dem.",
        "driver CPU s/dem.",
        "bot RSS MB (per dem.)",
        "DB MB (per dem.)",
        "load 1/5/15",
    ]
    return table("Scale run, per segment", header, rows)


def flatness(points: list[Point], base: Point) -> list[str]:
    """What breaks `per-demande cost flat`, segment to segment (empty: flat)."""
    problems: list[str] = []
    previous = base
    slopes: list[float] = []
    for point in points:
        slopes.append((point.rss - previous.rss) / (point.demandes - previous.demandes))
        previous = point
    for k in range(1, len(slopes)):
        allowed = max(abs(slopes[k - 1]) * (FLAT - 1), RSS_FLOOR_B)
        if slopes[k] - slopes[k - 1] > allowed:
            problems.append(
                f"RSS per demande {slopes[k - 1] / 1024:.1f} KB → {slopes[k] / 1024:.1f} KB "
                f"(segment {k + 1})"
            )
    for what in ("confirm", "to_email", "reply", "sync"):
        for k in range(1, len(points)):
            before, after = points[k - 1].segment[what], points[k].segment[what]
            if not before or not after:
                continue
            if p95(after) > max(p95(before) * FLAT, p95(before) + P95_FLOOR_S):
                problems.append(
                    f"p95 {what} {p95(before) * 1000:.0f} ms → {p95(after) * 1000:.0f} ms "
                    f"(segment {k + 1})"
                )
    return problems


def phase_bound(demandes: int) -> float:
    return 300 + S_PER_DEMANDE * demandes / CONCURRENCY


@bound(SETUP_S + phase_bound(DEMANDES) + 300 * len(CHECKPOINTS) + SETTLE_S + 300)
async def test_scale_run(synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path) -> None:
    report(
        f"\nScale run: {DEMANDES} demandes (checkpoints {CHECKPOINTS}), {AGENTS} agents, "
        f"concurrency {CONCURRENCY}, pool {AIDANTS} aidants + {INSTRUCTEURS} instructeurs, "
        f"email replies in {EMAIL_SHARE:.0%} of demandes; {machine()}"
    )
    setup_started = time.perf_counter()
    async with asyncio.timeout(SETUP_S):
        # The suite's per-test database helper: a fresh PostgreSQL database, dropped after.
        files = await proc.register_bot(
            synapse, tmp_path / "bot", database_url=databases.create_database()
        )
        aidants = [await clients.client(f"aidant{i}") for i in range(AIDANTS)]
        instrs = [await clients.client(f"instr{i}") for i in range(INSTRUCTEURS)]
        text, live_rows, counts = directory_csv(
            AGENTS,
            [str(c.user_id) for c in aidants],
            [str(c.user_id) for c in instrs],
            synapse.server_name,
        )
        csv_path = tmp_path / "annuaire.csv"
        csv_path.write_text(text, encoding="utf-8")
        lines = text.count("\n") - 1
        t0 = time.perf_counter()
        done = await proc.run_aplus_async(
            "directory", "import", str(csv_path), "--config", str(files.config), timeout=SETUP_S
        )
        import_s = time.perf_counter() - t0
        assert done.returncode == 0, done.stdout + done.stderr
        report(
            f"  directory: {lines} lines ({counts}) imported by `aplus directory import` in "
            f"{import_s:.1f} s ({lines / import_s:.0f} lines/s): {done.stdout.strip()}"
        )
    url = files.settings().database.url.reveal()
    assert url.startswith("postgresql"), "the scale run's bot is on PostgreSQL"
    assert databases.database_name(url).startswith(databases.NAME_PREFIX)
    listen_port = proc.free_port()
    stop = asyncio.Event()
    syncers: list[asyncio.Task[None]] = []
    async with (
        relay() as sink,
        asyncpg.create_pool(asyncpg_dsn(url), min_size=1, max_size=4) as pool,
    ):
        with files.config.open("a") as config:
            config.write(email_section(sink.port, listen_port))
        bot = proc.bot_process(files)
        with proc.killed_at_exit(bot):
            async with asyncio.timeout(SETUP_S):
                bot.start()
                await bot.wait_log("the service is ready", SETUP_S)
                await bot.wait_log(r"email listener", WAIT_S)
                ids = {
                    str(r["matrix_id"]): int(r["id"])
                    for r in await pool.fetch(
                        "SELECT id, matrix_id FROM agents WHERE matrix_id = ANY($1::text[])",
                        [str(c.user_id) for c in aidants],
                    )
                }
                assert len(ids) == len(aidants), ids
                dms = [await open_direct_chat(c, files.user_id) for c in aidants]
                live = [
                    LiveGroup(dep, org, name, [instrs[m] for m in members], email_only)
                    for dep, org, name, members, email_only in live_rows
                ]
                localpart = files.user_id.split(":")[0].removeprefix("@")
                probe = ProbeDevice(synapse, await synapse.login(localpart, files.password))
            run = Scale(
                synapse,
                files,
                pool,
                sink,
                MailIndex(sink),
                ("127.0.0.1", listen_port),
                live,
                ids,
                bot.pid,
            )
            report(
                f"  set-up {time.perf_counter() - setup_started:.0f} s; live groups: "
                + ", ".join(f"{g.name} ({len(g.instructeurs)} + 1 by email)" for g in live)
            )
            syncers = [asyncio.ensure_future(keep_syncing(c, stop)) for c in [*aidants, *instrs]]
            syncers.append(asyncio.ensure_future(probe_syncs(probe, run.samples.sync, stop)))
            try:
                points, base = await replay(run, aidants, dms, bot)
                await settle(run)
                checks = await count_everything(run)
            finally:
                stop.set()
                await asyncio.gather(*syncers, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await probe.close()
            assert bot.returncode() is None, bot.describe()
            await bot.stop()
    print_summary(run, points, base, checks, import_s, lines)
    problems = flatness(points, base)
    report(
        "per-demande cost flat between checkpoints (RSS slope, p95 of each segment within "
        f"25 %, floors {RSS_FLOOR_B // 1024} KB and {P95_FLOOR_S * 1000:.0f} ms): "
        + (verdict(not problems) if len(points) > 1 else "not judged (one segment)")
        + ("".join(f"\n  {p}" for p in problems))
    )
    assert not problems, problems


async def replay(
    run: Scale, aidants: list[nio.AsyncClient], dms: list[str], bot: proc.AplusProcess
) -> tuple[list[Point], Point]:
    began = time.perf_counter()
    base = await run.measure(0, 0.0, run.samples.cut())
    points: list[Point] = []
    previous = base
    for target in CHECKPOINTS:
        cut = run.samples.cut()
        seg_started = time.perf_counter()
        n = target - run.started
        report(f"checkpoint {target}: {n} demandes, bound {phase_bound(n):.0f} s; {machine()}")
        # A worker that fails cancels the others: the run stops at its first wrong result.
        async with asyncio.timeout(phase_bound(n)), asyncio.TaskGroup() as workers:
            for w in range(min(CONCURRENCY, n)):
                workers.create_task(run.worker(aidants[w], dms[w], target))
        assert bot.returncode() is None, bot.describe()
        seg_s = time.perf_counter() - seg_started
        point = await run.measure(target, time.perf_counter() - began, cut)
        point.per_min = (target - previous.demandes) / seg_s * 60
        points.append(point)
        previous = point
        if target != CHECKPOINTS[-1]:  # the last one is in the summary
            report(segment_table(points, base))
    return points, base


async def settle(run: Scale) -> None:
    """Until the bot has nothing left to send: emails, Matrix messages, inbound mail."""

    async def idle() -> bool:
        async with run.pool.acquire() as db:
            emails = await db.fetchval(
                "SELECT count(*) FROM email_outbox WHERE delivered_at IS NULL AND failed_at IS NULL"
            )
            messages = await db.fetchval(
                "SELECT count(*) FROM outbox_messages WHERE sent_at IS NULL"
            )
        return emails == 0 and messages == 0

    async with asyncio.timeout(SETTLE_S):
        await matrix.wait_for(idle, SETTLE_S, "the bot's outboxes empty", interval=0.5)
        await asyncio.sleep(2)  # the relay's last 250s land in the sink
        run.mails.update()


async def count_everything(run: Scale) -> dict[str, int]:
    """Every message and email counted (not sampled); an assertion per kind of loss."""
    mails = run.mails
    mails.update()
    lost = [m for m in run.to_email if m not in mails.markers]
    assert not lost, f"{len(lost)} message(s) never emailed: {lost[:5]}"
    doubled = {m: len(v) for m, v in mails.markers.items() if len(v) != 1}
    assert not doubled, f"markers emailed more than once: {list(doubled.items())[:5]}"
    wrong = [m for m, want in run.to_email.items() if mails.markers[m][0][1] != (want,)]
    assert not wrong, f"emailed to someone else: {wrong[:5]}"
    unexpected = set(mails.markers) - set(run.to_email) - {m for _, m in run.to_room}
    assert not unexpected, f"markers nobody sent by Matrix: {sorted(unexpected)[:5]}"
    ids = [i for i, n in mails.message_ids.items() if n != 1]
    assert not ids, f"Message-IDs twice at the relay: {ids[:5]}"
    for room_id, marker in run.to_room:
        aidant = run.aidant_of_room[room_id]
        n = sum(marker in e.body for e in bridged(aidant, room_id, run.bot_id))
        assert n == 1, f"email reply {marker} posted {n} times in {room_id}"
    undecryptable = sum(
        len(matrix.inbox(c).undecryptable[r]) for r, c in run.aidant_of_room.items()
    )
    async with run.pool.acquire() as db:
        statuses = dict(
            (str(s), int(n))
            for s, n in await db.fetch("SELECT status, count(*) FROM demandes GROUP BY status")
        )
        twice = await db.fetchval(
            "SELECT count(*) FROM (SELECT event_id FROM outbox_messages WHERE event_id IS NOT "
            "NULL GROUP BY event_id HAVING count(*) > 1) AS d"
        )
        outbox = await db.fetchval("SELECT count(*) FROM outbox_messages")
        unsent = await db.fetchval("SELECT count(*) FROM outbox_messages WHERE sent_at IS NULL")
        failed = await db.fetchval("SELECT count(*) FROM email_outbox WHERE failed_at IS NOT NULL")
        delivered = await db.fetchval(
            "SELECT count(*) FROM email_outbox WHERE delivered_at IS NOT NULL"
        )
    assert statuses == {"cloturee": DEMANDES}, statuses
    assert twice == 0 and unsent == 0, (twice, unsent)
    assert failed == 0, f"{failed} email(s) refused for good"
    return {
        "members' messages, each in exactly one email (by marker)": len(run.to_email),
        "email replies, each decrypted once by the aidant (by marker)": len(run.to_room),
        "emails at the relay, each Message-ID once": len(mails.message_ids),
        "bot's email rows delivered (one per recipient)": int(delivered),
        "bot's Matrix outbox rows, all sent, each event ID once": int(outbox),
        "events the aidants could not decrypt (not asserted: demande rooms)": undecryptable,
        "demandes closed (cloturee)": statuses["cloturee"],
    }


def print_summary(
    run: Scale,
    points: list[Point],
    base: Point,
    checks: dict[str, int],
    import_s: float,
    lines: int,
) -> None:
    counted = list(checks.items())
    report(table("Scale run: counted afterwards (all checks passed)", ["what", "n"], counted))
    last = points[-1]
    total_min = last.wall_s / 60
    per_min = last.demandes / total_min
    report(segment_table(points, base))
    s = run.samples
    rows = [
        ["!confirmer PUT → demande row ready (DB)", ms3(s.confirm), len(s.confirm)],
        ["member's message → email accepted by the relay", ms3(s.to_email), len(s.to_email)],
        ["email reply 250 → decrypted by the aidant", ms3(s.reply), len(s.reply)],
        ["bot account's incremental /sync (bot's filter, every 2 s)", ms3(s.sync), len(s.sync)],
    ]
    report(table("Whole run, latencies (ms)", ["path", "p50 / p95 / max", "n"], rows))
    synapse_cpu = (last.synapse_cpu_s - base.synapse_cpu_s) / last.demandes
    bot_cpu = (last.bot_cpu_s - base.bot_cpu_s) / last.demandes
    db_per = (last.db_bytes - base.db_bytes) / last.demandes
    report(
        f"\nsustained: {per_min:.1f} demandes/min over {total_min:.1f} min at concurrency "
        f"{CONCURRENCY} (target ≥ {TARGET_PER_MIN:.0f}/min: {verdict(per_min >= TARGET_PER_MIN)})"
        f"; CPU per demande: Synapse {synapse_cpu:.2f} s, bot {bot_cpu:.2f} s; database "
        f"{db_per / 1024:.0f} KB per demande ({last.db_bytes / 2**20:.0f} MB); bot RSS "
        f"{base.rss / 2**20:.0f} → {last.rss / 2**20:.0f} MB; directory import {lines} lines in "
        f"{import_s:.1f} s; relay parsing in the driver {run.mails.parse_s:.0f} s; {machine()}"
    )
    month_cpu_h = (synapse_cpu + bot_cpu) * NATIONAL_PER_MONTH / 3600
    report(
        f"at {NATIONAL_PER_MONTH:,} demandes/month: {month_cpu_h:.1f} CPU-hours a month for "
        f"Synapse + bot, {db_per * NATIONAL_PER_MONTH / 2**30:.2f} GB of bot database a month; "
        f"this machine's measured rate is {per_min / 1.2:.0f}× the business-hours average "
        "(1.2/min)"
    )
