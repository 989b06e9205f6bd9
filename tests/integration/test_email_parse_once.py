"""A reply is parsed once, by the listener that accepted it; posting reads that parse.

The real bot and listener, the real homeserver; both call sites of the parser counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nio
import pytest

from bot.devserver import LocalSynapse
from bridge import posting
from bridge.inbound import listener
from tests.support import matrix
from tests.support.bot import count_from, reply_with
from tests.support.email import email_bot, mailonly, relay, reply
from tests.support.world import demande_of, make_world, open_demande

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


async def test_posting_uses_what_the_listener_parsed(
    synapse: LocalSynapse,
    clients: matrix.Clients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: dict[str, int] = {"listener": 0, "posting": 0}

    def counting(where: str, real: Any) -> Any:
        def parse(*args: Any, **kwargs: Any) -> Any:
            calls[where] += 1
            return real(*args, **kwargs)

        return parse

    monkeypatch.setattr(listener, "parse_inbound", counting("listener", listener.parse_inbound))
    monkeypatch.setattr(posting, "parse_inbound", counting("posting", posting.parse_inbound))
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(world.instr1, room_id, 1)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
        files: list[Any] = []
        world.instr1.add_event_callback(
            lambda room, event: files.append(event), nio.RoomEncryptedFile
        )
        n = count_from(world.instr1, room_id, world.bot_id)
        code, _ = await reply(
            runner,
            sink.to(sophie)[0],
            sophie,
            "!jemenoccupe\nVoici l'attestation.",
            attachments=[("attestation.pdf", "application/pdf", PDF)],
        )
        assert code == 250
        await reply_with(world.instr1, room_id, world.bot_id, "Voici l'attestation", after=n)
        await reply_with(world.instr1, room_id, world.bot_id, "s'occupe de la demande", after=n)
        await matrix.sync_until(world.instr1, lambda: bool(files), what="the bridged file")
        assert files[0].body == "attestation.pdf"
        assert calls == {"listener": 1, "posting": 0}
        await runner.check_alive()
