"""The homeserver guard in a real Synapse: the module loaded, the real bot answering.

Each test asserts the HTTP answer Synapse gives *and* that no membership event was
made (the person is absent from the room, or still only invited). The homeserver is
the `guarded` one (tests/support/guard.py): its module names one bot account, shared
by these tests on one data folder.

Synapse version these tests were written against: 1.163.2 (see
`test_admin_join_api_is_checked_for_a_non_admin_target`, element-hq/synapse#19364).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import nio
import pytest

from bot.devserver import DevServerError, LocalSynapse, guard_module
from bot.domain.model import Role
from bot.services.membership_api import MembershipApi
from bot.store.ledger_reader import LedgerReader
from synapse_module.decision import REASON_FIELD
from tests.support import bot as botsupport
from tests.support import guard, matrix
from tests.support.bot import filled_form, next_reply, reply_with, say

# One worker runs them all (make test: --dist loadgroup): each worker would start its
# own guarded homeserver per backend.
pytestmark = pytest.mark.xdist_group("guarded")

SYNAPSE_VERSION = importlib.metadata.version("matrix-synapse")
# A bound on a request, not a measure: the module gives up after its timeout (2 s);
# had it waited for Synapse's own HTTP client (60 s), the request would exceed this.
REQUEST_BOUND_S = 20
# The guard's worker retries a refused invite after a doubling wait (at most 60 s).
RECOVERY_BOUND_S = 150


@dataclass
class World:
    env: guard.GuardedHomeserver
    runner: botsupport.BotRunner
    clients: matrix.Clients
    territoire: str
    directory: botsupport.Directory
    aidant: nio.AsyncClient
    instr1: nio.AsyncClient

    @property
    def bot_id(self) -> str:
        return self.runner.user_id

    @property
    def app(self) -> Any:
        assert self.runner.app is not None
        return self.runner.app

    @property
    def api(self) -> MembershipApi:
        assert self.app.membership_api is not None
        return self.app.membership_api  # type: ignore[no-any-return]


@pytest.fixture
async def world(guarded: guard.GuardedHomeserver, tmp_path: Path) -> AsyncIterator[World]:
    runner = guarded.runner()
    clients = matrix.Clients(guarded.synapse, tmp_path / "nio")
    await runner.start()
    try:
        territoire = guard.next_territoire()
        directory = botsupport.Directory()
        aidant = await clients.client("aidant")
        instr1 = await clients.client("instr1")
        store = runner.store
        await botsupport.add_group(store, directory, "fs", "france_services", [territoire])
        await botsupport.add_group(store, directory, "caf", "caf", [territoire])
        await botsupport.add_group(store, directory, "cpam", "cpam", [territoire])
        await botsupport.add_agent(
            store, directory, "aidant", matrix_id=aidant.user_id, roles=[Role.AIDANT], group="fs"
        )
        await botsupport.add_agent(
            store,
            directory,
            "instr1",
            matrix_id=instr1.user_id,
            roles=[Role.INSTRUCTEUR],
            group="caf",
        )
        yield World(guarded, runner, clients, territoire, directory, aidant, instr1)
    finally:
        await clients.aclose()
        await runner.stop()


async def open_demande(world: World) -> tuple[str, str]:
    """The aidant's !confirmer: createRoom with the routed invitees, through the guard."""
    dm = await botsupport.open_direct_chat(world.aidant, world.bot_id)
    n = botsupport.count_from(world.aidant, dm, world.bot_id)
    await say(world.aidant, dm, filled_form(territoire=world.territoire))
    recap = await next_reply(world.aidant, dm, world.bot_id, after=n)
    assert "!confirmer" in recap, recap
    await say(world.aidant, dm, "!confirmer")
    opened = await next_reply(world.aidant, dm, world.bot_id, after=n + 1)
    assert "ouverte" in opened, opened
    reference = opened.split("Demande ", 1)[1].split(" ", 1)[0]
    async with world.runner.store.transaction() as tx:
        demande = await tx.get_demande_by_reference(reference)
    assert demande is not None and demande.creation_step == "ready", demande
    assert demande.room_id is not None
    return demande.room_id, reference


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]

    @property
    def reason(self) -> Any:
        return self.body.get(REASON_FIELD)


async def call(
    world: World, method: str, path: str, token: str, body: dict[str, Any] | None = None
) -> Answer:
    timeout = aiohttp.ClientTimeout(total=REQUEST_BOUND_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.request(
            method,
            world.env.synapse.base_url + path,
            json=body if body is not None else {},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        data = await response.json(content_type=None)
        return Answer(response.status, data if isinstance(data, dict) else {})


def room_path(room_id: str, action: str) -> str:
    return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/{action}"


async def join(world: World, client: nio.AsyncClient, room_id: str) -> Answer:
    assert client.access_token
    return await call(
        world, "POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}", client.access_token
    )


async def members(world: World, room_id: str) -> dict[str, str]:
    """user → membership, as the homeserver holds it (asked with the bot's account)."""
    return await world.app.gateway.members(room_id)  # type: ignore[no-any-return]


async def audit(world: World, action: str) -> list[Any]:
    async with world.runner.store.transaction() as tx:
        return list(await tx.audit_entries(action=action))


async def add_instructeur(world: World, key: str, group: str = "cpam") -> nio.AsyncClient:
    client = await world.clients.client(key)
    await botsupport.add_agent(
        world.runner.store,
        world.directory,
        key,
        matrix_id=client.user_id,
        roles=[Role.INSTRUCTEUR],
        group=group,
    )
    return client


async def command(
    world: World, client: nio.AsyncClient, room_id: str, text: str, expect: str
) -> str:
    n = botsupport.count_from(client, room_id, world.bot_id)
    await say(client, room_id, text)
    return await reply_with(client, room_id, world.bot_id, expect, after=n)


# -- the everyday paths still work -------------------------------------------------------


async def test_create_room_and_inviter_go_through_the_guard(world: World) -> None:
    room_id, _ = await open_demande(world)
    # createRoom carried the routed invitees: the module asked the ledger, which said yes.
    present = await members(world, room_id)
    assert present[world.aidant.user_id] == "invite"
    assert present[world.instr1.user_id] == "invite"
    await matrix.accept_invite(world.aidant, room_id)
    await matrix.accept_invite(world.instr1, room_id)

    instr2 = await add_instructeur(world, "instr2")
    await command(world, world.aidant, room_id, f"!inviter {instr2.user_id}", "Invité")
    await matrix.accept_invite(instr2, room_id)
    present = await members(world, room_id)
    assert {present[u] for u in (world.aidant.user_id, world.instr1.user_id, instr2.user_id)} == {
        "join"
    }
    ours = {world.aidant.user_id, world.instr1.user_id, instr2.user_id}
    assert not [e for e in await audit(world, "guard_refused") if e.actor in ours]


# -- refusals by Synapse itself ----------------------------------------------------------


async def test_a_member_inviting_an_outsider_gets_a_403_from_synapse(world: World) -> None:
    room_id, reference = await open_demande(world)
    await matrix.accept_invite(world.aidant, room_id)
    outsider = await world.clients.user("outsider")
    assert world.aidant.access_token
    answer = await call(
        world,
        "POST",
        room_path(room_id, "invite"),
        world.aidant.access_token,
        {"user_id": outsider.user_id},
    )
    # The module's refusal (event auth would also refuse the aidant's invite, without
    # fr.aplus.reason): the ledger does not list the outsider.
    assert answer.status == 403, answer
    assert answer.reason == "not_in_ledger", answer
    assert outsider.user_id not in await members(world, room_id)
    # Nothing reached the room, so the bot's kick had nothing to do; the refusal is audited.
    await matrix.wait_for(lambda: _refused(world, outsider.user_id), 10, "the audit")
    intrusions = await audit(world, "intruder_detected")
    assert all(e.actor != outsider.user_id for e in intrusions)
    entry = next(e for e in await audit(world, "guard_refused") if e.actor == outsider.user_id)
    assert entry.reference == reference and entry.details["action"] == "invite"


async def _refused(world: World, user_id: str) -> bool:
    return any(e.actor == user_id for e in await audit(world, "guard_refused"))


async def test_a_leftover_invite_of_a_removed_agent_does_not_let_them_in(world: World) -> None:
    room_id, _ = await open_demande(world)
    # The agent leaves the ledger (as `!agent-desactiver` does, committed before its kick
    # of the invite): the invite is still there when they try to join.
    async with world.runner.store.transaction() as tx:
        demande = await tx.get_demande_by_room(room_id)
        assert demande is not None
        agent = world.directory.agents["instr1"]
        assert await tx.remove_participant(
            demande_id=demande.id, agent_id=agent.id, now=world.app.clock.now()
        )
    assert (await members(world, room_id))[world.instr1.user_id] == "invite"
    answer = await join(world, world.instr1, room_id)
    assert answer.status == 403, answer
    assert answer.reason == "not_in_ledger", answer
    assert (await members(world, room_id))[world.instr1.user_id] == "invite"


# -- the bot's endpoint down, slow, or answered by a standby ---------------------------


async def test_bot_unreachable_refuses_demande_rooms_only_and_invites_are_retried(
    world: World,
) -> None:
    room_id, _ = await open_demande(world)
    await matrix.accept_invite(world.aidant, room_id)
    instr2 = await add_instructeur(world, "instr2")
    operator = await world.clients.client("operator")
    await botsupport.add_agent(
        world.runner.store,
        world.directory,
        "operator",
        matrix_id=operator.user_id,
        roles=[Role.OPERATEUR],
        group=None,
    )
    await world.api.stop()  # the endpoint does not listen (nor does the standby URL)

    # A join into the demande room: refused, closed.
    answer = await join(world, world.instr1, room_id)
    assert (answer.status, answer.reason) == (403, "unavailable"), answer
    assert (await members(world, room_id))[world.instr1.user_id] == "invite"

    # The bot's own invite (`!inviter`): the ledger takes the agent, the homeserver
    # refuses the invite, the bot keeps it pending.
    await command(world, world.aidant, room_id, f"!inviter {instr2.user_id}", "Invité")
    assert instr2.user_id not in await members(world, room_id)

    async def still_pending() -> bool:
        async with world.runner.store.transaction() as tx:
            due = await tx.due_invites(datetime.now(UTC) + timedelta(days=1), room_id)
        return any(item.user_id == instr2.user_id for item in due)

    # The guard's worker tried (and was refused): the invitation stays queued.
    await matrix.wait_for(still_pending, 30, "the refused invite kept queued")

    # Other rooms are left alone: a direct chat between two agents...
    dm = await matrix.create_encrypted_room(world.aidant, [world.instr1.user_id])
    assert (await join(world, world.instr1, dm)).status == 200
    # ... and the admin room (the bot's own room, not a demande).
    await world.app.admin.room.sync_members()
    admin_room = world.app.admin.room.room_id
    await matrix.accept_invite(operator, admin_room)
    assert (await members(world, admin_room))[operator.user_id] == "join"

    # The endpoint back: the pending invite goes out at the guard worker's next try, and
    # the join is accepted.
    await world.api.start()

    async def invited() -> bool:
        return (await members(world, room_id)).get(instr2.user_id) == "invite"

    await matrix.wait_for(invited, RECOVERY_BOUND_S, "the pending invite to be sent", 1.0)
    await matrix.accept_invite(instr2, room_id)
    assert (await join(world, world.instr1, room_id)).status == 200
    assert (await members(world, room_id))[world.instr1.user_id] == "join"


@contextlib.asynccontextmanager
async def black_hole(port: int) -> AsyncIterator[None]:
    """A peer that accepts connections on `port` and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", port, reuse_address=True)
    try:
        yield
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


async def test_a_bot_that_never_answers_is_refused_within_the_timeout(world: World) -> None:
    room_id, _ = await open_demande(world)
    await world.api.stop()
    async with black_hole(world.env.primary_port):
        # `call` gives up after REQUEST_BOUND_S: this answer came from the module's own
        # timeout, not Synapse's 60 s one.
        answer = await join(world, world.instr1, room_id)
    assert (answer.status, answer.reason) == (403, "unavailable"), answer
    assert (await members(world, room_id))[world.instr1.user_id] == "invite"
    await world.api.start()
    assert (await join(world, world.instr1, room_id)).status == 200


async def test_a_standby_answers_from_the_database(world: World) -> None:
    room_id, _ = await open_demande(world)
    await world.api.stop()
    # A second process would run just this: the endpoint on its own read-only view of
    # the same database, at the second of the module's URLs.
    settings = world.runner.settings()
    assert settings.guard.shared_secret is not None
    standby = MembershipApi(
        reader=LedgerReader.open(settings.database.url.reveal()),
        bot_user_id=world.bot_id,
        shared_secret=settings.guard.shared_secret.reveal(),
        host="127.0.0.1",
        port=world.env.standby_port,
    )
    await standby.start()
    try:
        assert (await join(world, world.instr1, room_id)).status == 200
        outsider = await world.clients.user("outsider")
        assert world.instr1.access_token
        refused = await call(
            world,
            "POST",
            room_path(room_id, "invite"),
            world.instr1.access_token,
            {"user_id": outsider.user_id},
        )
        assert (refused.status, refused.reason) == (403, "not_in_ledger"), refused
    finally:
        await standby.close()
        await world.api.start()
    assert (await members(world, room_id))[world.instr1.user_id] == "join"


# -- server admins ---------------------------------------------------------------------


async def test_make_room_admin_on_a_demande_room_is_refused(world: World) -> None:
    room_id, _ = await open_demande(world)
    admin = await world.clients.user("srvadmin", admin=True)
    before = await world.app.gateway.state_event(room_id, "m.room.power_levels")
    answer = await call(
        world,
        "POST",
        f"/_synapse/admin/v1/rooms/{quote(room_id, safe='')}/make_room_admin",
        admin.access_token,
        {},
    )
    # Its first step, power levels sent as the bot, is refused (check_event_for_spam);
    # had it passed, its invite (sent as the bot too) would be refused by the ledger.
    assert answer.status == 403, answer
    assert answer.reason == "power_levels", answer
    assert await world.app.gateway.state_event(room_id, "m.room.power_levels") == before
    assert admin.user_id not in await members(world, room_id)
    # Nor can the admin join: not invited (and an admin's join skips the module).
    assert (
        await call(
            world, "POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}", admin.access_token
        )
    ).status == 403
    assert admin.user_id not in await members(world, room_id)


async def test_an_admin_logged_in_as_the_bot_cannot_invite_anyone(world: World) -> None:
    room_id, _ = await open_demande(world)
    admin = await world.clients.user("srvadmin", admin=True)
    outsider = await world.clients.user("outsider")
    login = await call(
        world,
        "POST",
        f"/_synapse/admin/v1/users/{quote(world.bot_id, safe='')}/login",
        admin.access_token,
        {},
    )
    assert login.status == 200, login
    as_bot = login.body["access_token"]
    try:
        answer = await call(
            world, "POST", room_path(room_id, "invite"), as_bot, {"user_id": outsider.user_id}
        )
        for_admin = await call(
            world, "POST", room_path(room_id, "invite"), as_bot, {"user_id": admin.user_id}
        )
    finally:
        await call(world, "POST", "/_matrix/client/v3/logout", as_bot)
    # The inviter *is* the bot: only the ledger tells this invite from the bot's own.
    assert (answer.status, answer.reason) == (403, "not_in_ledger"), answer
    assert (for_admin.status, for_admin.reason) == (403, "not_in_ledger"), for_admin
    present = await members(world, room_id)
    assert outsider.user_id not in present and admin.user_id not in present


async def test_admin_join_api_on_a_demande_room_is_refused(world: World) -> None:
    room_id, _ = await open_demande(world)
    admin = await world.clients.user("srvadmin", admin=True)
    outsider = await world.clients.user("outsider")
    answer = await call(
        world,
        "POST",
        f"/_synapse/admin/v1/join/{quote(room_id, safe='')}",
        admin.access_token,
        {"user_id": outsider.user_id},
    )
    # The admin API first invites as the admin, who is not in the room: event auth
    # refuses it before any join.
    assert answer.status == 403, answer
    assert outsider.user_id not in await members(world, room_id)


async def test_admin_join_api_is_checked_for_a_non_admin_target(world: World) -> None:
    """Pins element-hq/synapse#19364 (Synapse 1.163.2): the admin API's join runs
    `user_may_join_room` for its target, though the docs say admin joins are not checked.

    To reach that join, the admin must be able to invite: this builds a room where the
    admin has the power to, and that becomes a demande room (the bot's room with the
    demande state) only afterwards, for a reference the ledger does not know. If a later
    Synapse exempts this path (as discussed on #19364), the join succeeds here and this
    test fails: demande rooms stay closed to this API by event auth (the admin is not in
    them, see the test above), and the bot's kick removes whoever gets in;
    deploy/synapse-module.md must then say so.
    """
    admin = await world.clients.user("srvadmin", admin=True)
    target = await world.clients.user("target")
    bot_token = world.app.gateway.client.access_token
    created = await call(
        world,
        "POST",
        "/_matrix/client/v3/createRoom",
        bot_token,
        {
            "preset": "private_chat",
            "invite": [admin.user_id],
            "power_level_content_override": {"users": {admin.user_id: 100}},
        },
    )
    assert created.status == 200, created
    room_id = created.body["room_id"]
    assert (
        await call(
            world, "POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}", admin.access_token
        )
    ).status == 200
    marked = await call(
        world,
        "PUT",
        room_path(room_id, "state/fr.aplus.demande/"),
        bot_token,
        {"reference": "A-1999-999999", "version": 1},
    )
    assert marked.status == 200, marked

    answer = await call(
        world,
        "POST",
        f"/_synapse/admin/v1/join/{quote(room_id, safe='')}",
        admin.access_token,
        {"user_id": target.user_id},
    )
    assert answer.status == 403, (
        f"Synapse {SYNAPSE_VERSION}: the admin API's join of a non-admin was not checked "
        f"by the module (element-hq/synapse#19364 changed?): {answer}"
    )
    assert answer.reason == "unknown_demande", answer
    # The admin's invite went through (admins skip user_may_invite); the join did not.
    assert (await members(world, room_id))[target.user_id] == "invite"


# -- the module's configuration --------------------------------------------------------


def _config_check(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synapse.config", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_wrong_module_config_stops_synapse_with_a_clear_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 40)
    secret.chmod(0o600)
    good = guard_module(
        bot_user_id="@aplus:localhost",
        api_urls=["http://127.0.0.1:9181"],
        shared_secret_path=secret,
    )
    server = LocalSynapse(tmp_path / "good", modules=[good])
    server.prepare()
    checked = await asyncio.to_thread(_config_check, server.config_path)
    assert checked.returncode == 0 and "Config parses OK!" in checked.stdout, checked

    bad = json.loads(json.dumps(good))
    bad["config"]["timeout_seconds"] = 30
    server = LocalSynapse(tmp_path / "bad", modules=[bad])
    server.prepare()
    checked = await asyncio.to_thread(_config_check, server.config_path)
    # Synapse 1.163.2's checker prints the module and the key, not the module's message
    # (it prints str() of the wrapped error); starting Synapse prints all of it.
    assert checked.returncode == 1, checked
    assert "synapse_module.aplus_guard.AplusGuard" in checked.stderr, checked.stderr
    assert "'timeout_seconds'" in checked.stderr, checked.stderr
    with pytest.raises(DevServerError) as stopped:
        await server.start()
    assert "modules.<item 0>.config.timeout_seconds" in str(stopped.value)
    assert "au plus 5 secondes" in str(stopped.value)
    assert not server.running

    missing = {**good, "module": "synapse_module.absent.AplusGuard"}
    server = LocalSynapse(tmp_path / "missing", modules=[missing])
    with pytest.raises(DevServerError) as stopped:
        await server.start()
    assert "synapse_module.absent" in str(stopped.value)
