"""The real services, assembled by `bot.app.assemble` over the recording fakes.

`world` gives every test a SQLite store in its tmp_path, a fixed clock it may move, the
recording gateway and relay, and a small directory (France services, CAF and CPAM of
the 95; an aidant, two Matrix instructeurs and an email-only one of the CAF). No
homeserver, no socket: a test runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope

from bot.app import Parts, assemble
from bot.domain.model import Agent, Demande, Group, Role
from bot.matrix.events import parse_stored
from bot.policy_loader import load_policies
from bot.ports import PoliciesRef
from bot.settings import Settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from tests.services.fakes import RecordingGateway, RecordingRelay, Sent
from tests.support.bot import filled_form
from tests.support.clock import FakeClock
from tests.support.smtp import Received, build_reply

SERVER = "localhost"
BOT = f"@bot:{SERVER}"
AIDANT = f"@aidant:{SERVER}"
INSTR1 = f"@instr1:{SERVER}"
INSTR2 = f"@instr2:{SERVER}"
MAILONLY = "sophie@caf95.example.test"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, 10:00 in Paris


@dataclass
class World:
    parts: Parts
    gw: RecordingGateway
    relay: RecordingRelay
    clock: FakeClock
    groups: dict[str, Group] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    _ids: int = 0

    @property
    def store(self) -> Store:
        return self.parts.store

    def later(self, **delta: float) -> None:
        assert self.clock.at is not None
        self.clock.at += timedelta(**delta)

    # -- events, as nio gives them (parsed from the JSON the homeserver sends)
    def event(self, room_id: str, sender: str, content: dict[str, Any], **extra: Any) -> Any:
        self._ids += 1
        source = {
            "event_id": f"$in{self._ids}",
            "sender": sender,
            "origin_server_ts": int(self.clock.now().timestamp() * 1000),
            "room_id": room_id,
            "type": "m.room.message",
            "content": content,
            **extra,
        }
        if "state_key" in source:
            return parse_stored(source, decrypted=False)  # state is never encrypted
        return parse_stored(source, decrypted=True)  # as nio gives what it decrypted

    def text(self, room_id: str, sender: str, body: str) -> Any:
        return self.event(room_id, sender, {"msgtype": "m.text", "body": body})

    def member(self, room_id: str, user: str, membership: str, *, by: str | None = None) -> Any:
        return self.event(
            room_id,
            by or user,
            {"membership": membership},
            type="m.room.member",
            state_key=user,
        )

    async def receive(self, room_id: str, *events: Any) -> list[str]:
        """The events of one room, through the real router (the sync loop's path)."""
        return await self.parts.router.handle_events([(room_id, e) for e in events])

    async def flush(self) -> int:
        return await self.parts.outbox.flush()

    # -- email
    async def deliver_emails(self) -> int:
        assert self.parts.email is not None
        return await self.parts.email.delivery.flush()

    def emails_to(self, address: str) -> list[Received]:
        return [
            Received(d.sender, list(d.recipients), d.message, 0.0)
            for d in self.relay.delivered
            if address in d.recipients
        ]

    async def email_reply(self, original: Received, sender: str, text: str) -> str:
        """An agent answers `original`: through the listener's own SMTP handler, then the
        inbox poster and the Matrix outbox. Returns the listener's answer."""
        email = self.parts.email
        assert email is not None
        message = build_reply(original, sender=sender, text=text)
        envelope = Envelope()
        envelope.mail_from = sender
        answer = await email.handler.handle_RCPT(None, None, envelope, str(message["To"]), [])
        if not answer.startswith("250"):
            return answer
        envelope.original_content = message.as_bytes(policy=policy.SMTP)
        envelope.content = envelope.original_content
        answer = await email.handler.handle_DATA(None, None, envelope)
        await email.poster.flush()
        await self.flush()
        return answer

    # -- what the bot did
    def replies(self, room_id: str) -> list[Sent]:
        return self.gw.sent_to(room_id)

    async def audit(self, reference: str | None = None) -> list[str]:
        async with self.store.transaction() as tx:
            return [e.action for e in await tx.audit_entries(reference=reference)]

    async def demande(self, reference: str) -> Demande:
        async with self.store.transaction() as tx:
            found = await tx.get_demande_by_reference(reference)
        assert found is not None
        return found

    # -- the aidant's side
    async def direct_chat(self, user: str = AIDANT) -> str:
        """A direct chat the agent made and the bot joined (as Element makes it)."""
        self._ids += 1
        room_id = f"!dm{self._ids}:{SERVER}"
        self.gw.server[room_id] = {user: "join", BOT: "join"}
        await self.gw.refresh_members(room_id)
        return room_id

    async def open_demande(self, form: str | None = None) -> Demande:
        """Form, recap, !confirmer in a direct chat: the demande and its room, ready."""
        dm = await self.direct_chat()
        form = form or filled_form(date_mandat=self.clock.now().strftime("%d/%m/%Y"))
        await self.receive(dm, self.text(dm, AIDANT, form))
        await self.flush()
        assert "!confirmer" in self.replies(dm)[-1].body
        await self.receive(dm, self.text(dm, AIDANT, "!confirmer"))
        await self.flush()
        opened = self.replies(dm)[-1].body
        assert "ouverte" in opened, opened
        reference = opened.split("Demande ", 1)[1].split(" ", 1)[0]
        demande = await self.demande(reference)
        assert demande.creation_step == "ready" and demande.room_id
        return demande


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file at the latest migration, copied for each test (migrating takes
    most of a second; a copy, a millisecond)."""
    path = tmp_path_factory.mktemp("services-db") / "template.db"
    cipher = FieldCipher.from_secret(base64.b64encode(secrets.token_bytes(32)).decode())

    async def migrate() -> None:
        store = await Store.open(f"sqlite+aiosqlite:///{path}", cipher)
        await store.close()

    # Its own loop, in a thread: pytest-asyncio's loops are per test.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, migrate()).result()
    return path


async def make_world(tmp_path: Path, template: Path, *, email: bool) -> AsyncIterator[World]:
    values = {
        "APLUS_BOT_PASSWORD": "not-used-by-the-fakes",
        "APLUS_PICKLE_KEY": secrets.token_urlsafe(24),
        "APLUS_DATA_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "APLUS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'aplus.db'}",
    }
    settings = Settings.for_dev(
        tmp_path, "http://127.0.0.1:1", SERVER, BOT, values, email={} if email else None
    )
    shutil.copyfile(template, tmp_path / "aplus.db")
    store = await Store.connect(
        settings.database.url.reveal(),
        FieldCipher.from_secret(settings.secrets.data_key.reveal()),
    )
    gw = RecordingGateway(BOT, server_name=SERVER)
    relay = RecordingRelay()
    clock = FakeClock(START)
    parts = await assemble(
        settings,
        store=store,
        gateway=gw,
        clock=clock,
        policies=PoliciesRef(load_policies(settings.policies.dir)),
        relay=relay,
    )
    world = World(parts, gw, relay, clock)
    await _directory(world)
    try:
        yield world
    finally:
        if parts.email is not None:
            await parts.email.close()
        await parts.admin.close()
        await store.close()


async def _directory(world: World) -> None:
    async with world.store.transaction() as tx:
        for key, org in (("fs", "france_services"), ("caf", "caf"), ("cpam", "cpam")):
            world.groups[key] = await tx.upsert_group(
                name=key.upper(), organisation_id=org, departements=frozenset({"95"}), bal=None
            )
        people: list[tuple[str, str | None, str | None, Role, str]] = [
            ("aidant", AIDANT, None, Role.AIDANT, "fs"),
            ("instr1", INSTR1, None, Role.INSTRUCTEUR, "caf"),
            ("instr2", INSTR2, None, Role.INSTRUCTEUR, "caf"),
            ("mailonly", None, MAILONLY, Role.INSTRUCTEUR, "caf"),
        ]
        for key, matrix_id, email, role, group in people:
            world.agents[key], _ = await tx.upsert_agent(
                first_name=key.capitalize(),
                last_name="Test",
                email=email,
                matrix_id=matrix_id,
                group_id=world.groups[group].id,
                roles=frozenset({role}),
            )


@pytest.fixture
async def world(tmp_path: Path, migrated_db: Path) -> AsyncIterator[World]:
    async for w in make_world(tmp_path, migrated_db, email=False):
        yield w


@pytest.fixture
async def email_world(tmp_path: Path, migrated_db: Path) -> AsyncIterator[World]:
    async for w in make_world(tmp_path, migrated_db, email=True):
        yield w
