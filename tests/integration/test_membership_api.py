"""The bot's membership endpoint (the homeserver guard asks it), over real HTTP, on both
databases; and the proof that the bot commits its ledger before createRoom and /invite.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.devserver import LocalSynapse
from bot.domain import guard as rules
from bot.domain.model import Agent, DemandeForm, Mandat, MandatType, Role, Usager
from bot.services.clock import SystemClock
from bot.services.membership_api import CHECK_PATH, MembershipApi, audit_refusals
from bot.store import lease as lease_sql
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from bot.store.ledger_reader import LedgerReader
from synapse_module import decision
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import filled_form, next_reply, say
from tests.support.clock import FakeClock

SECRET = secrets.token_urlsafe(32)
AIDANT = "@aidant:aplus.test"
INSTR = "@instr:aplus.test"
OUTSIDER = "@outsider:aplus.test"
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
FORM = DemandeForm(
    territoire="75",
    organisations=("caf",),
    categorie=None,
    objet="Versement suspendu",
    usager=Usager(prenom="Jeanne", nom="Test", date_naissance=date(1961, 3, 12)),
    description="Le versement est suspendu.",
    mandat=Mandat(type=MandatType.PAPIER, date=date(2026, 3, 1), attestation=True),
)
# A bound on each request, not a measure: an answer that waited for the test's open
# transaction (SQLite's busy timeout is 10 s) would not arrive within it.
ANSWER_BOUND_S = 5


@pytest.fixture
async def api(store: Store, store_url: str) -> AsyncIterator[MembershipApi]:
    endpoint = MembershipApi(
        reader=LedgerReader.open(store_url),
        bot_user_id="@aplus:aplus.test",
        shared_secret=SECRET,
        host="127.0.0.1",
        port=0,
        on_refusal=audit_refusals(store, SystemClock()).refused,
    )
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.close()


async def check(api: MembershipApi, question: Any, secret: str = SECRET) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=ANSWER_BOUND_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(
            api.base_url + CHECK_PATH,
            json=question,
            headers={"Authorization": f"Bearer {secret}"},
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def allowed(api: MembershipApi, **question: Any) -> bool:
    status, body = await check(api, question)
    assert status == 200, body
    return bool(body["allow"])


async def seed(store: Store) -> tuple[str, int, Agent, Agent]:
    async with store.transaction() as tx:
        group = await tx.upsert_group(
            name="CAF", organisation_id="caf", departements=frozenset({"75"}), bal=None
        )
        aidant, _ = await tx.upsert_agent(
            first_name="A",
            last_name="Aidant",
            email=None,
            matrix_id=AIDANT,
            group_id=None,
            roles=frozenset({Role.AIDANT}),
        )
        instr, _ = await tx.upsert_agent(
            first_name="I",
            last_name="Instructeur",
            email=None,
            matrix_id=INSTR,
            group_id=group.id,
            roles=frozenset({Role.INSTRUCTEUR}),
        )
        demande = await tx.create_demande(
            reference=await tx.next_reference(2026),
            form=FORM,
            aidant_agent_id=aidant.id,
            group_ids=[group.id],
            draft_id=None,
            now=NOW,
        )
        await tx.add_participant(
            demande_id=demande.id, agent=aidant, kind="aidant", added_by=AIDANT, now=NOW
        )
    return demande.reference, demande.id, aidant, instr


async def test_answers_come_from_the_committed_ledger_and_never_wait(
    store: Store, api: MembershipApi
) -> None:
    reference, demande_id, _aidant, instr = await seed(store)
    create = {"action": "create", "reference": reference, "invitees": [AIDANT]}
    assert await allowed(api, **create)
    assert not await allowed(api, **{**create, "invitees": [AIDANT, OUTSIDER]})
    # Invites inside createRoom come before the bot knows the room ID: by reference.
    assert await allowed(api, action="invite", room_id="!new:x", reference=reference, user=AIDANT)

    # The bot's own transaction is open (SQLite: its write lock; PostgreSQL: a new row,
    # locked) and adds the instructeur: the endpoint answers at once, from the last
    # commit, so the instructeur is not in yet.
    async with store.transaction() as tx:
        await tx.add_participant(
            demande_id=demande_id, agent=instr, kind="instructeur", added_by=AIDANT, now=NOW
        )
        assert not await allowed(api, action="join", reference=reference, user=INSTR)
    assert await allowed(api, action="join", reference=reference, user=INSTR)

    async with store.transaction() as tx:
        await tx.set_creation_step(demande_id, "invited", room_id="!room:aplus.test")
    # Once the room is recorded: by room ID; a second room for the demande is refused.
    assert await allowed(api, action="join", room_id="!room:aplus.test", user=INSTR)
    assert not await allowed(api, **create)
    outsider = {"action": "invite", "room_id": "!room:aplus.test", "user": OUTSIDER}
    assert await check(api, outsider) == (200, {"allow": False, "reason": "not_in_ledger"})
    # Another room claiming to be this demande's (its state names the reference).
    other = {"action": "join", "room_id": "!other:x", "reference": reference, "user": INSTR}
    assert await check(api, other) == (200, {"allow": False, "reason": "other_room"})

    async with store.transaction() as tx:
        await tx.remove_participant(demande_id=demande_id, agent_id=instr.id, now=NOW)
    assert not await allowed(api, action="join", room_id="!room:aplus.test", user=INSTR)
    await api.stop()  # waits for the refusals' audit writes
    async with store.transaction() as tx:
        refused = await tx.audit_entries(action="guard_refused")
    assert {(e.actor, e.details["reason"]) for e in refused} >= {
        (OUTSIDER, "not_in_ledger"),
        (INSTR, "not_in_ledger"),
        ("", "room_exists"),
        (INSTR, "other_room"),
    }
    assert all(e.reference == reference for e in refused)


async def test_only_the_shared_secret_opens_the_endpoint(store: Store, api: MembershipApi) -> None:
    reference, *_ = await seed(store)
    question = {"action": "join", "reference": reference, "user": AIDANT}
    assert await check(api, question, secret="wrong") == (401, {"error": "unauthorised"})
    assert await check(api, question, secret="") == (401, {"error": "unauthorised"})
    assert (await check(api, question))[0] == 200
    # A malformed question is a refusal, never an exception.
    for bad in ([1, 2], {"action": "leave", "reference": reference}, {"action": "join"}):
        assert await check(api, bad) == (200, {"allow": False, "reason": "bad_question"})
    # An unknown demande.
    unknown = {"action": "join", "reference": "A-1999-000001", "user": AIDANT}
    assert await check(api, unknown) == (200, {"allow": False, "reason": "unknown_demande"})


async def test_no_answer_when_the_database_cannot_read(tmp_path: Path) -> None:
    # The module then asks the next URL, and refuses if none answers (fail closed).
    endpoint = MembershipApi(
        reader=LedgerReader.open(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'aplus.db'}"),
        bot_user_id="@aplus:aplus.test",
        shared_secret=SECRET,
        host="127.0.0.1",
        port=0,
    )
    await endpoint.start()
    try:
        status, body = await check(endpoint, {"action": "join", "reference": "A", "user": AIDANT})
    finally:
        await endpoint.close()
    assert status == 503
    assert decision.read_answer(status, body) is None


# -- the bot commits its ledger before it calls createRoom or /invite -------------------


class LedgerSpy:
    """Wraps the bot's gateway: at each createRoom and /invite, asks the endpoint, as the
    homeserver guard would at that moment, before the request goes out."""

    def __init__(self, runner: botsupport.BotRunner) -> None:
        assert runner.app is not None and runner.app.membership_api is not None
        self.api = runner.app.membership_api
        self.bot = runner.user_id
        self.answers: list[tuple[str, str, bool]] = []
        gateway = runner.app.gateway
        self._create, self._invite = gateway.create_room, gateway.invite
        gateway.create_room = self.create_room  # type: ignore[method-assign]
        gateway.invite = self.invite  # type: ignore[method-assign]

    async def create_room(self, body: Any) -> str:
        step = decision.on_create_room(self.bot, body, self.bot)
        if isinstance(step, decision.Ask):  # a demande room
            ok = await allowed(self.api, **step.question)
            self.answers.append(("create", ",".join(step.question["invitees"]), ok))
        return await self._create(body)

    async def invite(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        ok = await allowed(self.api, action="invite", room_id=room_id, user=user_id)
        self.answers.append(("invite", user_id, ok))
        await self._invite(room_id, user_id, reason)


async def test_the_ledger_is_committed_before_create_room_and_invite(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        runner.guard = {"port": 0, "shared_secret_file": str(_secret_file(tmp_path))}
        await runner.start()
        spy = LedgerSpy(runner)
        directory = botsupport.Directory()
        aidant = await clients.client("aidant")
        instr1 = await clients.client("instr1")
        instr2 = await clients.client("instr2")
        store = runner.store
        await botsupport.add_group(store, directory, "fs", "france_services", ["95"])
        await botsupport.add_group(store, directory, "caf", "caf", ["95"])
        await botsupport.add_group(store, directory, "cpam", "cpam", ["95"])
        await botsupport.add_agent(
            store, directory, "aidant", matrix_id=aidant.user_id, roles=[Role.AIDANT], group="fs"
        )
        await botsupport.add_agent(
            store, directory, "i1", matrix_id=instr1.user_id, roles=[Role.INSTRUCTEUR], group="caf"
        )
        await botsupport.add_agent(
            store,
            directory,
            "i2",
            matrix_id=instr2.user_id,
            roles=[Role.INSTRUCTEUR],
            group="cpam",
        )
        dm = await botsupport.open_direct_chat(aidant, runner.user_id)
        await say(aidant, dm, filled_form())
        await next_reply(aidant, dm, runner.user_id, after=0)
        await say(aidant, dm, "!confirmer")
        opened = await next_reply(aidant, dm, runner.user_id, after=1)
        reference = opened.split("Demande ", 1)[1].split(" ", 1)[0]
        async with store.transaction() as tx:
            demande = await tx.get_demande_by_reference(reference)
        assert demande is not None and demande.room_id is not None
        await matrix.accept_invite(aidant, demande.room_id)
        await say(aidant, demande.room_id, f"!inviter {instr2.user_id}")
        await matrix.wait_for(lambda: any(a[0] == "invite" for a in spy.answers), 30, "!inviter")
        expected_create = ",".join(sorted([aidant.user_id, instr1.user_id]))
        assert spy.answers == [
            ("create", expected_create, True),
            ("invite", instr2.user_id, True),
        ]


def _secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "guard_secret"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


async def test_refusals_answered_as_standby_are_audited_once_active(
    postgres_url: str, field_cipher: FieldCipher
) -> None:
    """A standby answers the guard (its database is READ ONLY, fenced by the lease): the
    refusals it answered are kept, then written with their own time once it is active.
    Before, each one failed on the read-only transaction and was lost."""
    await (await Store.open(postgres_url, field_cipher)).close()  # the schema
    epoch: list[int | None] = [None]
    fenced = await Store.open(postgres_url, field_cipher, fence=lambda: epoch[0])
    plain = await Store.open(postgres_url, field_cipher)
    clock = FakeClock(NOW)
    audit = audit_refusals(fenced, clock, may_write=lambda: epoch[0] is not None)
    try:
        question = rules.Question("invite", "!r:aplus.test", "A-2026-000001", OUTSIDER, ())
        await audit.refused(question, rules.Answer(False, "not_in_ledger"), "A-2026-000001")
        async with plain.transaction() as tx:
            assert list(await tx.audit_entries(action="guard_refused")) == []
        # This process takes the lease over.
        async with plain.engine.begin() as conn:
            acquired = await lease_sql.acquire(conn, "test-holder", 30.0)
        assert acquired is not None
        epoch[0] = acquired.epoch
        clock.at = NOW + timedelta(seconds=30)
        await audit.flush()
        await audit.flush()  # written once
        async with plain.transaction() as tx:
            [entry] = await tx.audit_entries(action="guard_refused")
        assert entry.reference == "A-2026-000001" and entry.details["reason"] == "not_in_ledger"
        assert entry.at == NOW  # the time of the refusal, not of the takeover
    finally:
        await fenced.close()
        await plain.close()
