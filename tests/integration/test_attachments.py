"""Encrypted attachments in a demande room, both ways, and the size limit.

Real Synapse, the real bot, nio clients: the homeserver only ever holds ciphertext.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import nio
import pytest
from nio.crypto.attachments import decrypt_attachment

from bot.devserver import LocalSynapse
from bot.matrix.attachments import AttachmentError, AttachmentTooLarge
from bot.services.ledger import StoreLedger
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with
from tests.support.e2ee import post_file as _post_file
from tests.support.world import demande_of, make_world, open_demande

LIMIT = 64 * 1024


async def _download(client: nio.AsyncClient, mxc: str) -> bytes:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{client.homeserver}/_matrix/client/v1/media/download/{server}/{media_id}",
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as response,
    ):
        assert response.status == 200, response.status
        return await response.read()


async def test_encrypted_attachments_both_ways_within_the_limit(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        runner.bot_settings = {"max_attachment_bytes": LIMIT}
        await runner.start()
        assert runner.app is not None
        gateway = runner.app.gateway
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        instr1 = world.instr1
        files: list[nio.RoomEncryptedFile] = []
        instr1.add_event_callback(
            lambda _room, event: files.append(event),
            nio.RoomEncryptedFile,
        )
        await matrix.join_and_read(instr1, room_id, 1)

        # An instructeur's file: the bot downloads and decrypts it; the server has ciphertext.
        data = os.urandom(20_000)
        content = await _post_file(instr1, room_id, data, name="justificatif.pdf")
        assert await gateway.fetch_attachment(content) == (
            "justificatif.pdf",
            "application/pdf",
            data,
        )
        assert await _download(instr1, content["file"]["url"]) != data

        # The bot's file: the instructeur decrypts it; a retried send is the same event.
        payload = b"%PDF-1.4 accuse de reception " + os.urandom(5_000)
        recipients = await StoreLedger(runner.store, runner.user_id).authorised(room_id)
        assert recipients is not None
        event_id = await gateway.send_attachment(
            room_id, "accuse.pdf", "application/pdf", payload, "test-file-1", recipients
        )
        again = await gateway.send_attachment(
            room_id, "accuse.pdf", "application/pdf", payload, "test-file-1", recipients
        )
        assert again == event_id
        await matrix.sync_until(
            instr1, lambda: any(f.event_id == event_id for f in files), what="the bot's file"
        )
        [received] = [f for f in files if f.event_id == event_id]
        assert received.source["content"]["info"] == {"mimetype": "application/pdf", "size": 5029}
        ciphertext = await _download(instr1, received.url)
        assert ciphertext != payload
        clear = decrypt_attachment(
            ciphertext, received.key["k"], received.hashes["sha256"], received.iv
        )
        assert clear == payload

        # The bot never sends more than the limit, and refuses what is not encrypted.
        with pytest.raises(AttachmentTooLarge):
            await gateway.send_attachment(
                room_id, "gros.bin", "application/pdf", bytes(LIMIT + 1), "test-file-2", recipients
            )
        with pytest.raises(AttachmentError, match="pas chiffré"):
            await gateway.fetch_attachment(
                {"msgtype": "m.file", "body": "x.pdf", "url": content["file"]["url"]}
            )
        await runner.check_alive()


async def test_a_file_over_the_limit_is_refused_with_a_notice(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with botsupport.running_bot(synapse, tmp_path / "bot") as runner:
        runner.bot_settings = {"max_attachment_bytes": LIMIT}
        await runner.start()
        assert runner.app is not None
        gateway = runner.app.gateway
        world = await make_world(clients, runner)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        instr1, bot_id = world.instr1, world.bot_id
        await matrix.join_and_read(instr1, room_id, 1)

        n = count_from(instr1, room_id, bot_id)
        big = os.urandom(LIMIT + 1024)
        content = await _post_file(instr1, room_id, big, name="scan.pdf")
        notice = await reply_with(instr1, room_id, bot_id, "taille maximale", after=n)
        assert "n'a pas été transmis" in notice and "64 Ko" in notice, notice
        with pytest.raises(AttachmentTooLarge):
            await gateway.fetch_attachment(content)

        # A client that understates the size is stopped while downloading.
        liar = await _post_file(instr1, room_id, big, name="scan2.pdf", size=1000)
        with pytest.raises(AttachmentTooLarge):
            await gateway.fetch_attachment(liar)

        async with runner.store.transaction() as tx:
            refused = await tx.audit_entries(action="attachment_refused")
        assert [e.details["size"] for e in refused] == [LIMIT + 1024]
        await runner.check_alive()
