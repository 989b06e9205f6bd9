"""No live token, usager name or NIR in the log of a real exchange, even at DEBUG.

The process's own logging set-up (`aplus run`'s `_setup_logging`) at DEBUG, a real bot
with the email bridge on, the real listener, a real relay (aiosmtpd, in this process: its
`mail.log` lines land in the same log), real E2EE clients. The whole log is then searched.
"""

from __future__ import annotations

import re
from pathlib import Path

import nio

from bot.devserver import LocalSynapse
from tests.support import matrix
from tests.support.bot import count_from, filled_form, reply_with, say
from tests.support.email import email_bot, mailonly, relay, reply
from tests.support.logs import production_logging
from tests.support.smtp import reply_to
from tests.support.world import demande_of, make_world, open_demande

NIR = "2 61 03 95 123 456 45"


async def test_no_token_name_or_nir_in_the_log_of_an_exchange_at_debug(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    with production_logging("DEBUG") as log:
        async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
            await runner.start()
            world = await make_world(clients, runner)
            sophie = mailonly(world)
            _, reference = await open_demande(world, filled_form(nir=NIR))
            room_id = (await demande_of(world, reference)).room_id
            await matrix.join_and_read(world.instr1, room_id, 1)
            await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
            [dossier] = sink.to(sophie)
            address = reply_to(dossier)
            token = address.split("+", 1)[1].split("@", 1)[0]
            assert "Dupontel" in dossier.text  # what the reply quotes back

            # The email-only instructeur answers through the real listener (quoting the
            # dossier, as mail clients do), and her answer is posted.
            n = count_from(world.instr1, room_id, world.bot_id)
            code, _ = await reply(runner, dossier, sophie, "Bien reçu, je regarde le dossier.")
            assert code == 250
            await reply_with(world.instr1, room_id, world.bot_id, "Bien reçu", after=n)

            # A member's client sends an event that fails nio's schema once decrypted
            # (no msgtype): the bot, and the other members, decrypt it.
            malformed = {"body": f"Nom : DUPONTEL Jeanne, NIR {NIR}"}
            resp = await world.instr1.room_send(
                room_id, "m.room.message", malformed, ignore_unverified_devices=True
            )
            assert isinstance(resp, nio.RoomSendResponse), resp
            # Events are handled in order: an answer to a later command means it was seen.
            n = count_from(world.instr1, room_id, world.bot_id)
            await say(world.instr1, room_id, "!statut")
            await reply_with(world.instr1, room_id, world.bot_id, reference, after=n)
            await runner.check_alive()

    text = log.getvalue()
    assert "email listener" in text  # the log did record the exchange
    digits = NIR.replace(" ", "")
    spaced = re.compile(r"\s?".join(digits))
    for secret in (token, "dupontel", "jeanne"):
        assert secret not in text.lower(), f"{secret!r} in the log"
    assert not spaced.search(text), "the NIR is in the log"
