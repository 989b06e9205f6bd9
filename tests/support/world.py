"""A small world for scenario tests: a bot, a directory, an aidant and two instructeurs.

`make_world` fills the directory (France services, CAF and CPAM groups of the 95, an aidant,
two Matrix instructeurs and one email-only instructeur of the CAF); `open_demande` goes
through the direct chat, the form, the recap and `!confirmer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nio

from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, filled_form, next_reply, say


@dataclass
class World:
    runner: botsupport.BotRunner
    directory: botsupport.Directory
    aidant: nio.AsyncClient
    instr1: nio.AsyncClient
    instr2: nio.AsyncClient

    @property
    def bot_id(self) -> str:
        return self.runner.user_id


async def make_world(clients: matrix.Clients, runner: botsupport.BotRunner) -> World:
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
    for key, client in (("instr1", instr1), ("instr2", instr2)):
        await botsupport.add_agent(
            store, directory, key, matrix_id=client.user_id, roles=[Role.INSTRUCTEUR], group="caf"
        )
    await botsupport.add_agent(
        store,
        directory,
        "mailonly",
        matrix_id=None,
        email=f"{matrix.unique('sophie')}@caf95.example.test",
        roles=[Role.INSTRUCTEUR],
        group="caf",
        first_name="Sophie",
    )
    return World(runner, directory, aidant, instr1, instr2)


async def open_demande(world: World, form: str | None = None) -> tuple[str, str]:
    """Direct chat, form, recap, !confirmer. Returns (direct room, reference)."""
    dm = await botsupport.open_direct_chat(world.aidant, world.bot_id)
    n = count_from(world.aidant, dm, world.bot_id)
    await say(world.aidant, dm, form or filled_form())
    recap = await next_reply(world.aidant, dm, world.bot_id, after=n)
    assert "!confirmer" in recap, recap
    await say(world.aidant, dm, "!confirmer")
    opened = await next_reply(world.aidant, dm, world.bot_id, after=n + 1)
    assert "ouverte" in opened, opened
    reference = opened.split("Demande ", 1)[1].split(" ", 1)[0]
    return dm, reference


async def demande_of(world: World, reference: str) -> Any:
    async with world.runner.store.transaction() as tx:
        demande = await tx.get_demande_by_reference(reference)
    assert demande is not None
    return demande


async def room_state(client: nio.AsyncClient, room_id: str) -> dict[tuple[str, str], Any]:
    resp = await client.room_get_state(room_id)
    assert isinstance(resp, nio.RoomGetStateResponse), resp
    return {(e["type"], e.get("state_key", "")): e["content"] for e in resp.events}


async def audit_actions(world: World, reference: str | None = None) -> list[str]:
    async with world.runner.store.transaction() as tx:
        return [e.action for e in await tx.audit_entries(reference=reference)]
