"""An email body cannot ping the whole room through the bot's power.

The bot posts email replies itself, with creator power (room v12), above the
`notifications.room` level (50) that `@room` needs. Demande rooms are encrypted, so the
homeserver sees only `m.room.encrypted` and evaluates no mention rule there: each client
decides on the decrypted event, with the push rules it fetched from the homeserver.

Two judges, on the very content the bot posted (as a member decrypted it):

* the real Synapse's push rule evaluator: the bot's account sends that content into an
  unencrypted v12 room it created, and a member's `/notifications` tells whether it
  highlighted (`.m.rule.roomnotif` matches `@room` in the body of a sender allowed to
  notify the room, unless the event carries `m.mentions`; `.m.rule.is_room_mention`
  needs `m.mentions.room`);
* Element's own stack (matrix-js-sdk): its decision for the decrypted event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import nio

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import say
from tests.support.email import email_bot, mailonly, relay, reply
from tests.support.interop import ElementClient
from tests.support.matrix import TEST_PASSWORD
from tests.support.world import demande_of, make_world, open_demande


async def _highlighted(synapse: LocalSynapse, member: nio.AsyncClient, event_id: str) -> bool:
    """Whether `event_id` is in the member's `/notifications` with a highlight tweak."""
    url = f"{synapse.base_url}/_matrix/client/v3/notifications"
    headers = {"Authorization": f"Bearer {member.access_token}"}
    found: list[dict[str, Any]] = []

    async def listed() -> bool:
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
            assert resp.status == 200, resp.status
            items = (await resp.json())["notifications"]
        found[:] = [n for n in items if n["event"]["event_id"] == event_id]
        return bool(found)

    await matrix.wait_for(listed, 30, f"{event_id} in /notifications")
    return any(
        isinstance(a, dict) and a.get("set_tweak") == "highlight" and a.get("value", True)
        for a in found[0]["actions"]
    )


async def _as_the_bot_in_clear(runner: botsupport.BotRunner, member: nio.AsyncClient) -> str:
    """An unencrypted v12 room the bot's account creates (creator power), `member` joined."""
    assert runner.app is not None
    resp = await runner.app.gateway.client.room_create(invite=[member.user_id], room_version="12")
    assert isinstance(resp, nio.RoomCreateResponse), resp
    joined = await member.join(resp.room_id)
    assert isinstance(joined, nio.JoinResponse), joined
    return str(resp.room_id)


async def _content(
    member: nio.AsyncClient, room_id: str, event_id: str, files: list[Any]
) -> dict[str, Any]:
    """The content of `event_id` as `member` decrypted it (`files`: its file events)."""

    def found() -> list[Any]:
        seen = [*matrix.inbox(member).events(room_id), *files]
        return [e for e in seen if e.event_id == event_id]

    await matrix.sync_until(member, lambda: bool(found()), what=f"{event_id}, decrypted")
    content: dict[str, Any] = found()[0].source["content"]
    return content


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


async def test_an_email_reply_with_at_room_pings_nobody(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        user = await clients.user("element")
        async with ElementClient.start(synapse.base_url, user.user_id, TEST_PASSWORD) as element:
            world = await make_world(clients, runner)
            await botsupport.add_agent(
                runner.store,
                world.directory,
                "element",
                matrix_id=user.user_id,
                roles=[Role.INSTRUCTEUR],
                group="caf",
                first_name="Élise",
            )
            sophie = mailonly(world)
            _, reference = await open_demande(world)
            room_id = (await demande_of(world, reference)).room_id
            await element.join(room_id)
            await matrix.join_and_read(world.instr1, room_id, 1)
            await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
            [dossier] = sink.to(sophie)

            # Control: the rules are live. A participant naming Élise's account highlights.
            localpart = user.user_id[1:].split(":", 1)[0]
            await say(world.instr1, room_id, f"Question pour {localpart} : avez-vous vu ?")
            named = await element.wait_message(
                room_id, "Question pour", sender=world.instr1.user_id
            )
            assert named.status == "decrypted" and named.event is not None, named
            control = await element.push_actions(room_id, named.event.event_id)
            assert control["highlight"], control

            files: list[Any] = []
            world.instr1.add_event_callback(
                lambda room, event: files.append(event), nio.RoomEncryptedFile
            )
            code, _ = await reply(
                runner,
                dossier,
                sophie,
                "@room Urgent : le versement est bloqué, merci à tous de regarder.",
                attachments=[("@room.pdf", "application/pdf", PDF)],
            )
            assert code == 250
            posted: list[dict[str, Any]] = []
            for predicate in ("Urgent", "room.pdf"):
                got = await element.wait_message(room_id, predicate, sender=world.bot_id)
                assert got.status == "decrypted" and got.event is not None, got
                actions = await element.push_actions(room_id, got.event.event_id)
                assert not actions["highlight"], (predicate, actions)
                posted.append(await _content(world.instr1, room_id, got.event.event_id, files))
            text, file = posted
            assert text["m.mentions"] == {} and file["m.mentions"] == {}, posted

            # The same contents, sent by the same account in clear, judged by Synapse.
            clear = await _as_the_bot_in_clear(runner, world.instr2)
            gateway = runner.app.gateway  # type: ignore[union-attr]
            for index, content in enumerate(posted):
                sent = await gateway.request(
                    "PUT",
                    f"/_matrix/client/v3/rooms/{clear}/send/m.room.message/replay-{index}",
                    content,
                )
                assert not await _highlighted(synapse, world.instr2, sent["event_id"]), content
            # Control: the same account's plain "@room" does highlight there.
            plain = {"msgtype": "m.text", "body": "@room contrôle"}
            sent = await gateway.request(
                "PUT", f"/_matrix/client/v3/rooms/{clear}/send/m.room.message/control", plain
            )
            assert await _highlighted(synapse, world.instr2, sent["event_id"])
            await runner.check_alive()
