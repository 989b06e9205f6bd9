"""The real bot, in the test's event loop, against the session's real Synapse.

Each test gets its own bot account, database and crypto store, so tests never
see each other's rooms. The database is of the test's backend (tests/support/databases.py):
SQLite in the data folder, or a fresh PostgreSQL database. `BotRunner.restart()` stops the
bot like a process exit (tasks cancelled, connections closed) and starts it again on the
same data: same account, same device, same database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import nio

from bot.app import App
from bot.devserver import LocalSynapse, RegisteredUser
from bot.domain.model import Agent, Group, MandatType, Role
from bot.services.clock import Clock, SystemClock
from bot.settings import Settings
from bot.store.db import Store
from tests.support import databases, hangs, matrix


@dataclass
class BotRunner:
    synapse: LocalSynapse
    data_dir: Path
    user: RegisteredUser
    password: str
    database_url: str | None = None
    app: App | None = None
    task: asyncio.Task[None] | None = None
    secrets: dict[str, str] = field(default_factory=dict)
    # `[bot]` settings replaced for this test (e.g. a short undecryptable notice delay).
    bot_settings: dict[str, Any] = field(default_factory=dict)
    # False: the bot starts without its cross-signing identity (to show Element's refusal).
    cross_sign: bool = True
    # `[email]` keys over `DEV_EMAIL`; None: the email bridge is off.
    email: dict[str, Any] | None = None
    # An injected clock (tests that move time); None: the wall clock.
    clock: Clock | None = None
    # `[guard]` keys (the homeserver guard's endpoint); None: the endpoint is off.
    guard: dict[str, Any] | None = None

    @property
    def user_id(self) -> str:
        return self.user.user_id

    def settings(self) -> Settings:
        values = dict(self.secrets)
        if self.database_url:
            values["APLUS_DATABASE_URL"] = self.database_url
        return Settings.for_dev(
            self.data_dir,
            self.synapse.base_url,
            self.synapse.server_name,
            self.user_id,
            values,
            email=self.email,
            guard=self.guard,
        )

    async def start(self) -> App:
        settings = self.settings()
        if self.bot_settings:
            settings = dataclasses.replace(
                settings, bot=dataclasses.replace(settings.bot, **self.bot_settings)
            )
        app = App(settings, clock=self.clock or SystemClock(), _cross_sign=self.cross_sign)
        try:
            await app.start()
        except BaseException:
            # What it opened before it failed (its store, its endpoint, its client) is
            # closed here, in this test's loop: `stop()` never sees an app not started.
            await app.close()
            raise
        self.app = app
        task = asyncio.create_task(app.run(), name="bot")
        self.task = task
        await matrix.wait_for(lambda: app.sync.synced.is_set() or task.done(), 30, "bot sync")
        if task.done():
            task.result()
        return app

    async def stop(self) -> None:
        """Like a process exit: the tasks cancelled, then everything closed, even when
        the bot had failed (its error is raised once it is closed)."""
        try:
            if self.task is not None:
                task, self.task = self.task, None
                task.cancel()
                await _stopped(task)
        finally:
            if self.app is not None:
                app, self.app = self.app, None
                async with _bounded("closing the bot"):
                    await app.close()
                # A transaction left open holds a connection (on SQLite, the write lock:
                # the next start finds « database is locked »): named here, where it leaked.
                leaked = app.store.open_transactions()
                assert not leaked, f"transactions still open after the bot closed: {leaked}"

    async def restart(self) -> App:
        await self.stop()
        return await self.start()

    @property
    def store(self) -> Store:
        assert self.app is not None
        return self.app.store

    async def check_alive(self) -> None:
        if self.task is not None and self.task.done():
            self.task.result()


# A stop that does not end is a defect: named, with every task's stack, long before the
# test's own timeout (whose dump shows only an idle event loop).
STOP_BOUND_S = 90.0


@contextlib.asynccontextmanager
async def _bounded(what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(STOP_BOUND_S):
            yield
    except TimeoutError:
        raise AssertionError(
            f"{what}: not done after {STOP_BOUND_S:.0f} s; tasks:\n{hangs.task_stacks()}"
        ) from None


async def _stopped(task: asyncio.Task[None]) -> None:
    """Wait for the cancelled bot task to end (its error, if any, is raised)."""
    done, _ = await asyncio.wait({task}, timeout=STOP_BOUND_S)
    if not done:
        raise AssertionError(
            f"the bot did not stop within {STOP_BOUND_S:.0f} s; tasks:\n{hangs.task_stacks()}"
        )
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


async def new_bot(
    synapse: LocalSynapse, data_dir: Path, *, database_url: str | None = None
) -> BotRunner:
    password = secrets.token_urlsafe(16)
    user = await synapse.register(matrix.unique("bot"), password)
    # Registration leaves a device behind; the bot makes its own, for life.
    resp = await synapse.admin_request(
        "POST", "/_matrix/client/v3/logout", user.access_token, json={}
    )
    assert resp.ok, resp
    runner = BotRunner(
        synapse,
        data_dir,
        user,
        password,
        database_url=database_url or databases.bot_database_url(),
        secrets={
            "APLUS_BOT_PASSWORD": password,
            "APLUS_PICKLE_KEY": secrets.token_urlsafe(24),
            "APLUS_DATA_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        },
    )
    return runner


@contextlib.asynccontextmanager
async def running_bot(
    synapse: LocalSynapse, data_dir: Path, *, database_url: str | None = None
) -> AsyncIterator[BotRunner]:
    runner = await new_bot(synapse, data_dir, database_url=database_url)
    try:
        yield runner
    finally:
        await runner.stop()


# -- the directory of a test ------------------------------------------------------


@dataclass
class Directory:
    """Groups and agents of one test (names unique to the test)."""

    groups: dict[str, Group] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)


async def add_group(
    store: Store, directory: Directory, key: str, organisation: str, departements: Iterable[str]
) -> Group:
    async with store.transaction() as tx:
        group = await tx.upsert_group(
            name=matrix.unique(key),
            organisation_id=organisation,
            departements=frozenset(departements),
            bal=None,
        )
    directory.groups[key] = group
    return group


async def add_agent(
    store: Store,
    directory: Directory,
    key: str,
    *,
    matrix_id: str | None,
    roles: Iterable[Role],
    group: str | None,
    email: str | None = None,
    first_name: str | None = None,
) -> Agent:
    async with store.transaction() as tx:
        agent, _ = await tx.upsert_agent(
            first_name=first_name or key.capitalize(),
            last_name="Test",
            email=email,
            matrix_id=matrix_id,
            group_id=directory.groups[group].id if group else None,
            roles=frozenset(roles),
        )
    directory.agents[key] = agent
    return agent


# -- the aidant's side --------------------------------------------------------------


async def open_direct_chat(client: nio.AsyncClient, bot_user_id: str) -> str:
    """An encrypted direct chat with the bot, as Element creates it; waits for the bot."""
    resp = await client.room_create(
        is_direct=True,
        invite=[bot_user_id],
        preset=nio.RoomPreset.trusted_private_chat,
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    assert isinstance(resp, nio.RoomCreateResponse), resp
    room_id: str = resp.room_id
    await matrix.sync_until(
        client,
        lambda: room_id in client.rooms and matrix.has_joined(client, room_id, bot_user_id),
        what="the bot joining the direct chat",
    )
    return room_id


async def say(client: nio.AsyncClient, room_id: str, body: str) -> str:
    return await matrix.send_text(client, room_id, body)


async def next_reply(
    client: nio.AsyncClient, room_id: str, sender: str, *, after: int, wait: float = 30
) -> str:
    """The first decrypted message from `sender` in the room beyond the `after` first ones."""
    box = matrix.inbox(client)

    def replies() -> list[Any]:
        return [e for e in box.events(room_id) if e.sender == sender]

    await matrix.sync_until(client, lambda: len(replies()) > after, wait, f"a reply from {sender}")
    body: str = replies()[after].body
    return body


def count_from(client: nio.AsyncClient, room_id: str, sender: str) -> int:
    return len([e for e in matrix.inbox(client).events(room_id) if e.sender == sender])


def filled_form(
    *,
    territoire: str = "95",
    organismes: str = "CAF",
    prenom: str = "Jeanne",
    nom: str = "Dupontel",
    naissance: str = "12/03/1961",
    objet: str = "Blocage du versement de l'allocation logement",
    description: str = (
        "Le versement est suspendu depuis trois mois.\nL'usager a renvoyé ses pièces."
    ),
    mandat: str = "papier",
    date_mandat: str | None = None,
    attestation: bool = True,
    nir: str | None = None,
) -> str:
    lines = [
        f"territoire : {territoire}",
        f"organismes : {organismes}",
        f"objet : {objet}",
        f"prénom : {prenom}",
        f"nom : {nom}",
        f"date de naissance : {naissance}",
    ]
    if nir:
        lines.append(f"NIR : {nir}")
    lines += [
        f"mandat : {mandat}",
        f"date du mandat : {date_mandat or date.today().strftime('%d/%m/%Y')}",
        f"description : {description}",
    ]
    if attestation:
        lines.append("J'atteste avoir recueilli l'accord de l'usager")
    return "\n".join(lines)


MANDAT_TYPES = [m.value for m in MandatType]


async def reply_with(
    client: nio.AsyncClient,
    room_id: str,
    sender: str,
    contains: str,
    *,
    after: int = 0,
    wait: float = 30,
) -> str:
    """The first message from `sender`, beyond the `after` first ones, containing `contains`.

    Robust to other bot messages arriving in between (notices, a re-posted dossier).
    """
    box = matrix.inbox(client)

    def found() -> str | None:
        for e in [e for e in box.events(room_id) if e.sender == sender][after:]:
            if contains in e.body:
                return str(e.body)
        return None

    await matrix.sync_until(
        client, lambda: found() is not None, wait, f"a reply containing {contains!r}"
    )
    body = found()
    assert body is not None
    return body
