"""Messages the bot cannot decrypt: kept, retried when the key arrives, acted on once,
and one notice when the key never comes. Real Synapse, the real bot, nio clients.

To make a message undecryptable *for the bot only*, the sender shares its Megolm
session with every device but the bot's and holds that one to-device message back;
releasing it later is the key arriving late.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import aiohttp
import nio

from bot.devserver import LocalSynapse
from bot.domain.undecryptable import NOTICE_TEXT
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.world import demande_of, make_world, open_demande


async def _to_device(client: nio.AsyncClient, event_type: str, messages: dict[str, Any]) -> None:
    url = (
        f"{client.homeserver.rstrip('/')}/_matrix/client/v3/sendToDevice/"
        f"{event_type}/{secrets.token_hex(8)}"
    )
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            url,
            json={"messages": messages},
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()


async def send_holding_key(
    client: nio.AsyncClient, room_id: str, body: str, *, held_from: str
) -> tuple[str, dict[str, Any]]:
    """Send an encrypted text whose room key reaches everyone but `held_from`'s devices.

    Returns the event ID and the held to-device messages (to release with `release`).
    """
    olm = client.olm
    assert olm is not None
    users = list(client.rooms[room_id].users)
    if client.should_query_keys:
        await client.keys_query()
    missing = olm.get_missing_sessions(users)
    if missing:
        await client.keys_claim(missing)
    held: dict[str, Any] = {}
    for _, to_device in olm.share_group_session_parallel(
        room_id, users, ignore_unverified_devices=True
    ):
        messages = to_device["messages"]
        if held_from in messages:
            held[held_from] = messages.pop(held_from)
        if messages:
            await _to_device(client, "m.room.encrypted", messages)
    olm.outbound_group_sessions[room_id].shared = True
    assert held, f"{held_from} has no device to hold the key from"
    resp = await client.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": body}, True
    )
    assert isinstance(resp, nio.RoomSendResponse), resp
    # Later messages get a new session, shared normally.
    client.invalidate_outbound_session(room_id)
    return resp.event_id, held


async def release(client: nio.AsyncClient, held: dict[str, Any]) -> None:
    await _to_device(client, "m.room.encrypted", held)


async def _actions(runner: botsupport.BotRunner, action: str) -> list[dict[str, Any]]:
    async with runner.store.transaction() as tx:
        return [e.details for e in await tx.audit_entries(action=action)]


async def test_a_command_decrypted_late_is_acted_on_once(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        await runner.start()
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        instr1, bot_id = world.instr1, world.bot_id
        await matrix.join_and_read(instr1, room_id, 1)

        n = count_from(instr1, room_id, bot_id)
        event_id, held = await send_holding_key(instr1, room_id, "!statut", held_from=bot_id)

        async def recorded() -> bool:
            async with runner.store.transaction() as tx:
                pending = await tx.undecryptable_events()
            return [p.event_id for p in pending] == [event_id] and all(
                p.key_requested_at is not None for p in pending
            )

        # Kept (with its ciphertext), audited, and its key asked of the sender's devices.
        await matrix.wait_for(recorded, 30, "the undecryptable command kept, key requested")
        assert [d["event_id"] for d in await _actions(runner, "undecryptable_event")] == [event_id]
        assert await _actions(runner, "command_statut") == []

        await release(instr1, held)
        status = await reply_with(instr1, room_id, bot_id, f"Demande {reference}", after=n)
        assert "Nouvelle" in status or "nouvelle" in status.lower(), status

        # Once: another command round-trip, and still one !statut acted on and answered.
        await say(instr1, room_id, "!aide")
        await reply_with(instr1, room_id, bot_id, "!inviter", after=n + 1)
        answers = [
            e.body
            for e in matrix.inbox(instr1).events(room_id)[n:]
            if e.sender == bot_id and f"Demande {reference} :" in e.body
        ]
        assert len(answers) == 1, answers
        assert len(await _actions(runner, "command_statut")) == 1
        [late] = await _actions(runner, "undecryptable_decrypted")
        assert late["event_id"] == event_id
        async with runner.store.transaction() as tx:
            assert await tx.undecryptable_events() == []
            [done] = await tx.undecryptable_events(pending_only=False)
        assert done.decrypted_at is not None and done.notice_at is None
        await runner.check_alive()


async def test_a_message_never_decrypted_gets_one_notice_and_is_kept(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        runner.bot_settings = {"undecryptable_notice_after_seconds": 1}
        await runner.start()
        world = await make_world(clients, runner)
        aidant, bot_id = world.aidant, world.bot_id
        # The aidant's direct chat: where the form is sent.
        dm = await botsupport.open_direct_chat(aidant, bot_id)

        event_id, _never_released = await send_holding_key(aidant, dm, "!demande", held_from=bot_id)
        notice = await reply_with(aidant, dm, bot_id, "déchiffré", after=0)
        assert notice == NOTICE_TEXT

        # A restart neither drops the event nor posts the notice again.
        await runner.restart()
        await say(aidant, dm, "!aide")
        await reply_with(aidant, dm, bot_id, "!demande", after=1)
        notices = [e for e in matrix.inbox(aidant).events(dm) if e.body == NOTICE_TEXT]
        assert len(notices) == 1
        assert [d["event_id"] for d in await _actions(runner, "undecryptable_notice")] == [event_id]
        async with runner.store.transaction() as tx:
            [kept] = await tx.undecryptable_events()
        assert kept.event_id == event_id and kept.notice_at is not None
        assert kept.event["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
        await runner.check_alive()
