"""Soak: mixed traffic with a fault every few seconds, then every message accounted for.

Run on purpose (never in `make test`):

    APLUS_SOAK_MINUTES=30 .venv/bin/pytest -s -p no:cacheprovider tests/bench/test_soak.py

Knobs: `APLUS_SOAK_MINUTES` (30), `APLUS_SOAK_FAULT_SECONDS` (5, between two faults),
`APLUS_SOAK_ROOMS` (3 demandes).

Everything is real: the session's Synapse, the bot in the test's event loop with the
email bridge on, nio E2EE clients for the aidant and an instructeur, the relay sink
(aiosmtpd on loopback) and the bot's own SMTP listener for the email-only instructeur's
replies. Traffic, about one action a second, in rotation over the demandes:

* good: a member's message (→ one email to the email-only instructeur), a member's
  encrypted file (→ one email with it attached), `!statut` (→ one answer in the room),
  an email reply (→ one message in the room, seen by a member's client);
* faults, one every `APLUS_SOAK_FAULT_SECONDS`, in rotation: a file whose media server
  does not answer; a malformed event (a body that is not text); the relay answering 4xx
  for a few seconds, then 5xx; an intruder brought in by a server admin
  (`make_room_admin`); an email-only agent deactivated in the middle of a conversation
  (invited with their group, answers by email, is deactivated, answers again).

Afterwards (the bot must still be running):

* every good message was handled exactly once: its marker is counted once at the relay
  sink, or in the room by the instructeur's client; a Matrix message whose email met the
  relay's 5xx is accounted for by its failed email row and `email_delivery_failed`;
* every bad one is in the audit: `event_given_up` (the media), `event_malformed`,
  `intruder_kicked` / `intruder_banned` (and the intruder is gone), the deactivated
  agent's later reply refused by the listener or dropped with `email_reply_dropped`,
  one `email_delivery_failed` per email the relay refused for good;
* the bot answers `!statut` within a second (a member's send → the answer decrypted by
  that member): measured ten times, printed with PASS/MISS like every bench figure.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nio
from nio.crypto.attachments import encrypt_attachment

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from bot.matrix.content import APLUS_KEY
from tests.bench.conftest import BotDb, bound, keep_syncing, machine, report, table, verdict
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.email import email_bot, listener, mailonly, relay
from tests.support.smtp import Received, RelaySink, build_reply, reply_to, send_mail
from tests.support.world import World, demande_of, make_world, open_demande

MINUTES = float(os.environ.get("APLUS_SOAK_MINUTES", "30"))
FAULT_EVERY_S = float(os.environ.get("APLUS_SOAK_FAULT_SECONDS", "5"))
ROOMS = int(os.environ.get("APLUS_SOAK_ROOMS", "3"))
TICK_S = 1.0
SETTLE_S = 600.0  # after the traffic: time for retries, backoffs and give-ups to end
STATUT_TARGET_S = 1.0
STATUT_SAMPLES = 10
UNREACHABLE_MEDIA = "mxc://unreachable.invalid/"


@dataclass
class Ledger:
    """What was sent, to be found again afterwards."""

    # (room, event ID, marker): a member's message or file, expected once at the sink.
    to_email: list[tuple[str, str, str]] = field(default_factory=list)
    files: set[str] = field(default_factory=set)  # markers sent as files
    # (room, marker): an email reply, expected once in the room.
    to_room: list[tuple[str, str]] = field(default_factory=list)
    statut: Counter[str] = field(default_factory=Counter)  # room → !statut sent
    media_faults: list[str] = field(default_factory=list)  # event IDs
    malformed: list[str] = field(default_factory=list)  # event IDs
    intruders: list[tuple[str, str]] = field(default_factory=list)  # (room, user)
    victims: list[str] = field(default_factory=list)  # deactivated agents' addresses
    victim_refused: int = 0  # their later reply refused by the listener
    victim_accepted: int = 0  # their later reply accepted (then dropped and audited)
    relay_windows: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # a send that failed (not a fault)


@dataclass
class Soak:
    synapse: LocalSynapse
    clients: matrix.Clients
    runner: botsupport.BotRunner
    world: World
    sink: RelaySink
    rooms: list[str]
    dossiers: dict[str, Received]
    ledger: Ledger = field(default_factory=Ledger)
    admin: Any = None
    _n: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def bot_id(self) -> str:
        return self.world.bot_id

    def marker(self) -> str:
        return f"soak{next(self._n):05d}"

    # ------------------------------------------------------------------ good traffic
    async def message(self, room: str, client: nio.AsyncClient) -> None:
        marker = self.marker()
        resp = await client.room_send(
            room,
            "m.room.message",
            {"msgtype": "m.text", "body": f"Message {marker}."},
            ignore_unverified_devices=True,
        )
        if isinstance(resp, nio.RoomSendResponse):
            self.ledger.to_email.append((room, resp.event_id, marker))
        else:
            self.ledger.errors.append(f"message {marker}: {resp}")

    async def file(self, room: str, client: nio.AsyncClient) -> None:
        marker = self.marker()
        name = f"{marker}.pdf"
        data = b"%PDF-1.4\n% " + marker.encode() + b"\n%%EOF\n"
        upload, keys = await client.upload(
            io.BytesIO(data), "application/pdf", name, encrypt=True, filesize=len(data)
        )
        if not isinstance(upload, nio.UploadResponse):
            self.ledger.errors.append(f"upload {marker}: {upload}")
            return
        content = {
            "msgtype": "m.file",
            "body": name,
            "filename": name,
            "info": {"mimetype": "application/pdf", "size": len(data)},
            "file": {"url": upload.content_uri, **(keys or {})},
        }
        resp = await client.room_send(
            room, "m.room.message", content, ignore_unverified_devices=True
        )
        if isinstance(resp, nio.RoomSendResponse):
            self.ledger.to_email.append((room, resp.event_id, marker))
            self.ledger.files.add(marker)
        else:
            self.ledger.errors.append(f"file {marker}: {resp}")

    async def statut(self, room: str, client: nio.AsyncClient) -> None:
        resp = await client.room_send(
            room,
            "m.room.message",
            {"msgtype": "m.text", "body": "!statut"},
            ignore_unverified_devices=True,
        )
        if isinstance(resp, nio.RoomSendResponse):
            self.ledger.statut[room] += 1
        else:
            self.ledger.errors.append(f"!statut: {resp}")

    async def email_reply(self, room: str) -> None:
        marker = self.marker()
        sophie = mailonly(self.world)
        dossier = self.dossiers[room]
        message = build_reply(dossier, sender=sophie, text=f"Réponse {marker}.")
        host, port = listener(self.runner)
        code, text = await send_mail(host, port, message, rcpt=reply_to(dossier), mail_from=sophie)
        if code == 250:
            self.ledger.to_room.append((room, marker))
        else:
            self.ledger.errors.append(f"email reply {marker}: {code} {text}")

    # ------------------------------------------------------------------ faults
    async def media_down(self, room: str) -> None:
        """A file whose media server does not answer (the bot's download gets a 502)."""
        instr = self.world.instr1
        _, fake = encrypt_attachment(b"x" * 100)
        resp = await instr.room_send(
            room,
            "m.room.message",
            {
                "msgtype": "m.file",
                "body": "piece.pdf",
                "info": {"mimetype": "application/pdf", "size": 100},
                "file": {"url": UNREACHABLE_MEDIA + secrets.token_hex(12), **fake},
            },
            ignore_unverified_devices=True,
        )
        assert isinstance(resp, nio.RoomSendResponse), resp
        self.ledger.media_faults.append(resp.event_id)

    async def malformed(self, room: str) -> None:
        """An event nio cannot read: the body is a number."""
        resp = await self.world.aidant.room_send(
            room,
            "m.room.message",
            {"msgtype": "m.text", "body": 12345},
            ignore_unverified_devices=True,
        )
        assert isinstance(resp, nio.RoomSendResponse), resp
        self.ledger.malformed.append(resp.event_id)

    async def relay_trouble(self, room: str) -> None:
        """The relay answers 4xx for 3 s, then 5xx for 2 s (in the background)."""
        self.ledger.relay_windows += 1

        async def window() -> None:
            self.sink.answer = "451 4.3.0 Soak: try again later"
            await asyncio.sleep(3)
            self.sink.answer = "550 5.7.1 Soak: refused"
            await asyncio.sleep(2)
            self.sink.answer = None

        self._background(window())

    async def intruder(self, room: str) -> None:
        """A server admin brings someone in (`make_room_admin`)."""
        if self.admin is None:
            self.admin = await self.clients.user("srvadmin", admin=True)
        intruder = await self.clients.user("intrus")
        resp = await self.synapse.admin_request(
            "POST",
            f"/_synapse/admin/v1/rooms/{quote(room, safe='')}/make_room_admin",
            self.admin.access_token,
            json={"user_id": intruder.user_id},
        )
        assert resp.ok, resp
        self.ledger.intruders.append((room, intruder.user_id))

    async def deactivation(self, room: str) -> None:
        """An email-only agent invited (their group, by `!inviter`), who answers by email,
        is deactivated, and answers again (no fresh E2EE device: no client race)."""
        n = len(self.ledger.victims)
        store, directory = self.runner.store, self.world.directory
        group = await botsupport.add_group(store, directory, f"partants{n}", "caf", ["95"])
        address = f"partant{n}-{secrets.token_hex(3)}@caf95.example.test"
        agent = await botsupport.add_agent(
            store,
            directory,
            f"partant{n}",
            matrix_id=None,
            email=address,
            roles=[Role.INSTRUCTEUR],
            group=f"partants{n}",
        )
        await self.statut_free_command(room, f"!inviter {group.name}")
        await self.sink.wait_for(lambda: bool(self.sink.to(address)), 180, "their dossier")
        dossier = self.sink.to(address)[0]
        host, port = listener(self.runner)
        marker = self.marker()
        answer = build_reply(dossier, sender=address, text=f"Réponse {marker}.")
        code, text = await send_mail(host, port, answer, rcpt=reply_to(dossier), mail_from=address)
        assert code == 250, (code, text)
        self.ledger.to_room.append((room, marker))

        async def posted() -> bool:
            async with store.transaction() as tx:
                return not await tx.pending_inbound()

        await matrix.wait_for(posted, 180, "their reply posted")
        assert self.runner.app is not None
        await self.runner.app.admin.directory.deactivate(agent.id, actor="soak")
        self.ledger.victims.append(address)
        late = build_reply(dossier, sender=address, text="Encore un mot après mon départ.")
        code, _ = await send_mail(host, port, late, rcpt=reply_to(dossier), mail_from=address)
        if code != 250:
            self.ledger.victim_refused += 1
        else:
            self.ledger.victim_accepted += 1

    async def statut_free_command(self, room: str, line: str) -> None:
        resp = await self.world.instr1.room_send(
            room, "m.room.message", {"msgtype": "m.text", "body": line}, None, True
        )
        assert isinstance(resp, nio.RoomSendResponse), resp

    # ------------------------------------------------------------------ plumbing
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def _background(self, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks)
        self._tasks.clear()


def _bridged(world: World, room: str) -> list[str]:
    return [
        e.body
        for e in matrix.inbox(world.instr1).events(room)
        if e.sender == world.bot_id
        and "bridged" in (e.source.get("content", {}).get(APLUS_KEY) or {})
    ]


def _statut_answers(world: World, room: str) -> int:
    return len(
        [
            e
            for e in matrix.inbox(world.instr1).events(room)
            if e.sender == world.bot_id
            and (e.source.get("content", {}).get(APLUS_KEY) or {}).get("reply") == "statut"
        ]
    )


def _attachments(mail: Received) -> list[str]:
    return [str(p.get_filename()) for p in mail.message.walk() if p.get_filename()]


def _bot_db(runner: botsupport.BotRunner) -> BotDb:
    assert runner.app is not None
    return BotDb(runner.app.settings.database.url.reveal())


def _failed_email_keys(runner: botsupport.BotRunner) -> list[str]:
    """The event key of every email the relay refused for good (one row each)."""
    db = _bot_db(runner)
    try:
        rows = db.all("SELECT event_key FROM email_outbox WHERE failed_at IS NOT NULL")
    finally:
        db.close()
    return [str(r[0]) for r in rows]


def _email_counts(runner: botsupport.BotRunner) -> tuple[int, int, int]:
    """(delivered, delivered after at least one 4xx, failed); a delivery counts as an attempt."""
    db = _bot_db(runner)
    try:
        row = db.one(
            "SELECT count(delivered_at), "
            "count(CASE WHEN delivered_at IS NOT NULL AND attempts > 1 THEN 1 END), "
            "count(failed_at) FROM email_outbox"
        )
    finally:
        db.close()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@bound(MINUTES * 60 * 2 + SETTLE_S + 1200)
async def test_soak_mixed_traffic_with_faults(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        # A small retry budget: an event given up in seconds, not hours.
        runner.bot_settings = {"event_retry_attempts": 3, "event_retry_base_seconds": 1}
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        rooms: list[str] = []
        for _ in range(ROOMS):
            _, reference = await open_demande(world)
            room = (await demande_of(world, reference)).room_id
            assert room
            await matrix.join_and_read(world.instr1, room, 1)
            await matrix.join_and_read(world.aidant, room, 1)
            rooms.append(room)
        await sink.wait_for(lambda: len(sink.to(sophie)) >= ROOMS, 60, "the dossier emails")
        dossiers: dict[str, Received] = {}
        for room in rooms:
            reference = next(r for r in await _references(runner) if r[1] == room)[0]
            dossiers[room] = next(m for m in sink.to(sophie) if reference in m.header("Subject"))
        soak = Soak(synapse, clients, runner, world, sink, rooms, dossiers)

        report(
            f"\nSoak: {MINUTES:g} min, {ROOMS} demandes, a fault every {FAULT_EVERY_S:g} s; "
            f"{machine()}"
        )
        stop = asyncio.Event()
        syncers = [
            asyncio.ensure_future(keep_syncing(c, stop)) for c in (world.instr1, world.aidant)
        ]
        good: list[Callable[[str], Awaitable[None]]] = [
            lambda r: soak.message(r, world.aidant),
            lambda r: soak.message(r, world.instr1),
            lambda r: soak.file(r, world.instr1),
            lambda r: soak.statut(r, world.aidant),
            soak.email_reply,
        ]
        faults: list[tuple[str, Callable[[str], Awaitable[None]]]] = [
            ("media", soak.media_down),
            ("malformed", soak.malformed),
            ("relay 4xx/5xx", soak.relay_trouble),
            ("intruder", soak.intruder),
            ("deactivation", soak.deactivation),
        ]
        started = time.perf_counter()
        deadline = started + MINUTES * 60
        next_fault = started + FAULT_EVERY_S
        next_report = started + 30
        actions = 0
        try:
            for i in itertools.count():
                now = time.perf_counter()
                if now >= deadline:
                    break
                room = rooms[i % len(rooms)]
                if now >= next_fault:
                    name, inject = faults[sum(soak.ledger.faults.values()) % len(faults)]
                    soak.ledger.faults[name] += 1
                    await inject(room)
                    next_fault = time.perf_counter() + FAULT_EVERY_S
                await good[i % len(good)](rooms[(i // len(good)) % len(rooms)])
                actions += 1
                await runner.check_alive()
                if time.perf_counter() >= next_report:
                    next_report += 30
                    report(
                        f"  {(time.perf_counter() - started) / 60:5.1f} min: {actions} actions, "
                        f"{sum(soak.ledger.faults.values())} faults, "
                        f"{len(sink.messages)} emails at the relay; {machine()}"
                    )
                await asyncio.sleep(TICK_S)
            await soak.drain()
        finally:
            # The members' clients stop their own syncing: from here on the checks sync.
            stop.set()
            await asyncio.gather(*syncers, return_exceptions=True)
        traffic_s = time.perf_counter() - started
        report(f"  traffic done: {actions} actions in {traffic_s:.0f} s; settling")
        settled = await _settle(soak)
        report(f"  settled in {settled:.0f} s")
        await runner.check_alive()
        unauthorised = await _check(soak)
        latencies = await _statut_latency(soak)
        _print(soak, actions, traffic_s, settled, latencies, unauthorised)


async def _references(runner: botsupport.BotRunner) -> list[tuple[str, str | None]]:
    async with runner.store.transaction() as tx:
        return [(d.reference, d.room_id) for d in await tx.list_demandes()]


async def _settle(soak: Soak) -> float:
    """Until nothing is left to do: emails delivered or failed, replies posted, retries
    given up, and the instructeur's client has every bridged reply and answer."""
    t0 = time.perf_counter()
    store = soak.runner.store
    world = soak.world

    async def idle() -> bool:
        async with store.transaction() as tx:
            if await tx.pending_inbound():
                return False
            if await tx.next_email_due() is not None:
                return False
            if await tx.next_event_retry_at() is not None:
                return False
            if await tx.rooms_with_pending_messages():
                return False
        return True

    await matrix.wait_for(idle, SETTLE_S, "the bot idle (emails, inbox, retries, outbox)")

    def seen_all() -> bool:
        for room in soak.rooms:
            bodies = _bridged(world, room)
            wanted = [m for r, m in soak.ledger.to_room if r == room]
            if not all(any(m in b for b in bodies) for m in wanted):
                return False
            if _statut_answers(world, room) < soak.ledger.statut[room]:
                return False
        return True

    await matrix.sync_until(world.instr1, seen_all, SETTLE_S, "every answer and bridged reply")
    return time.perf_counter() - t0


async def _check(soak: Soak) -> int:
    """Every assertion of the soak; returns how many late messages were audited."""
    world, sink, ledger = soak.world, soak.sink, soak.ledger
    assert not ledger.errors, ledger.errors[:5]
    sophie = mailonly(world)
    mails = sink.to(sophie)
    async with soak.runner.store.transaction() as tx:
        audit = await tx.audit_entries()
    failed = _failed_email_keys(soak.runner)
    failed_keys = set(failed)
    by_action: dict[str, list[dict[str, Any]]] = {}
    actors: dict[str, list[str]] = {}
    for entry in audit:
        by_action.setdefault(entry.action, []).append(dict(entry.details or {}))
        actors.setdefault(entry.action, []).append(entry.actor)

    # Good: each exactly once at its end, or its email refused for good and audited.
    # Each mail parsed once (a thousand mails, a thousand markers).
    texts = [m.text for m in mails]
    names = Counter(name for m in mails for name in _attachments(m))
    for _room, event_id, marker in ledger.to_email:
        if marker in ledger.files:
            count = names[f"{marker}.pdf"]
        else:
            count = sum(1 for t in texts if f"Message {marker}." in t)
        if count == 0:
            assert event_id in failed_keys, f"{marker} ({event_id}) lost"
        else:
            assert count == 1, f"{marker} emailed {count} times"
    bridged = {room: _bridged(world, room) for room in soak.rooms}
    for room, marker in ledger.to_room:
        count = sum(1 for b in bridged[room] if f"Réponse {marker}." in b)
        assert count == 1, f"reply {marker} posted {count} times"
    for room in soak.rooms:
        assert _statut_answers(world, room) == ledger.statut[room], room

    # Bad: each in the audit.
    given_up = {d.get("event_id") for d in by_action.get("event_given_up", [])}
    assert set(ledger.media_faults) <= given_up, set(ledger.media_faults) - given_up
    malformed = {d.get("event_id") for d in by_action.get("event_malformed", [])}
    assert set(ledger.malformed) <= malformed, set(ledger.malformed) - malformed
    removed = {
        d.get("user")
        for action in ("intruder_kicked", "intruder_banned")
        for d in by_action.get(action, [])
    }
    for room, user in ledger.intruders:
        assert user in removed, user
        members = await soak.runner.app.gateway.members(room)  # type: ignore[union-attr]
        assert members.get(user) not in ("join", "invite"), (room, user)
    # A deactivated agent's later reply: refused by the listener, or accepted and dropped.
    dropped = len(by_action.get("email_reply_dropped", []))
    assert ledger.victim_refused + ledger.victim_accepted == len(ledger.victims)
    assert dropped >= ledger.victim_accepted, (dropped, ledger.victim_accepted)
    late_audited = dropped
    # One audit entry (and one room notice) per email refused for good.
    assert len(by_action.get("email_delivery_failed", [])) == len(failed)
    return late_audited


async def _statut_latency(soak: Soak) -> list[float]:
    """A member's `!statut` → the bot's answer decrypted by that member, ten times."""
    world = soak.world
    room = soak.rooms[0]
    samples: list[float] = []
    for _ in range(STATUT_SAMPLES):
        before = _statut_answers(world, room)
        t0 = time.perf_counter()
        await matrix.send_text(world.instr1, room, "!statut")
        await matrix.sync_until(
            world.instr1, lambda b=before: _statut_answers(world, room) > b, 60, "!statut"
        )
        samples.append(time.perf_counter() - t0)
        soak.ledger.statut[room] += 1
    return samples


def _print(
    soak: Soak,
    actions: int,
    traffic_s: float,
    settled_s: float,
    latencies: list[float],
    unauthorised: int,
) -> None:
    ledger = soak.ledger
    delivered, retried, failed = _email_counts(soak.runner)
    rows = [
        ["member messages and files → one email each", len(ledger.to_email)],
        ["  of which files", len(ledger.files)],
        ["email replies → one room message each", len(ledger.to_room)],
        ["!statut → one answer each", sum(ledger.statut.values())],
        ["faults: media server not answering (event_given_up)", len(ledger.media_faults)],
        ["faults: malformed events (event_malformed)", len(ledger.malformed)],
        ["faults: relay 4xx then 5xx windows", ledger.relay_windows],
        ["faults: intruders via make_room_admin (removed)", len(ledger.intruders)],
        ["faults: agents deactivated mid-conversation", len(ledger.victims)],
        ["  their later reply refused by the listener", ledger.victim_refused],
        ["  their later reply accepted, then dropped (email_reply_dropped)", unauthorised],
        ["emails delivered by the relay (all kinds)", delivered],
        ["  of which after a 4xx (retried)", retried],
        ["emails refused for good (5xx), each audited email_delivery_failed", failed],
    ]
    report(table("Soak: counted afterwards (all checks passed)", ["what", "n"], rows))
    ms = sorted(s * 1000 for s in latencies)
    ok = max(latencies) <= STATUT_TARGET_S
    report(
        f"\n!statut after the soak ({len(ms)} samples, send → answer decrypted by the member): "
        f"median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms "
        f"(target ≤ {STATUT_TARGET_S * 1000:.0f} ms: {verdict(ok)})"
    )
    report(f"traffic {traffic_s:.0f} s ({actions} actions), settle {settled_s:.0f} s; {machine()}")
