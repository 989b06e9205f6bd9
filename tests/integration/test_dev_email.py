"""`aplus dev` runs the email bridge: mail lands as .eml files, a reply by hand is posted.

A real `aplus dev` child process: the demo aidant opens a demande for the CAF of the
95; the email-only demo instructeur's dossier and the group's shared mailbox copy
appear as files in `<data-dir>/mail/`; answering that file over SMTP to the
listener written in `dev-accounts.json` (stamped with the demo's trusted
authserv-id) puts the answer in the room, where a Matrix instructeur reads it.
"""

from __future__ import annotations

import json
import signal
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import nio

from bot.dev import EMAIL_DEMO_DOMAIN
from tests.integration.test_dev_command import WELCOME_DONE, _login
from tests.support import matrix
from tests.support import process as proc
from tests.support.bot import filled_form, next_reply, open_direct_chat, reply_with, say
from tests.support.smtp import send_mail


def _mail(folder: Path, address: str) -> list[Any]:
    found = []
    for path in sorted(folder.glob("*.eml")):
        assert path.stat().st_mode & 0o077 == 0, path
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        if address in str(message["To"]):
            found.append(message)
    return found


async def test_aplus_dev_keeps_mail_as_files_and_takes_replies_by_hand(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    demo = proc.AplusProcess(["dev", "--data-dir", str(data_dir)], tmp_path / "logs", name="dev")
    clients: list[nio.AsyncClient] = []
    with proc.killed_at_exit(demo):
        try:
            demo.start()
            await demo.wait_output(WELCOME_DONE, timeout=120)
            assert "Courriels envoyés" in demo.output()
            facts = json.loads((data_dir / "dev-accounts.json").read_text())
            smtp = facts["smtp_inbound"]
            assert smtp["host"] == "127.0.0.1" and smtp["port"] > 0
            folder = Path(facts["mail_dir"])
            assert folder == data_dir / "mail"
            users = {u["email"].split("@")[0]: u for u in facts["users"]}
            sophie = users["sophie.petit"]
            assert sophie["email"].endswith("@" + EMAIL_DEMO_DOMAIN) and not sophie["password"]
            bot_id = facts["bot"]["user_id"]

            camille = await _login(
                facts["homeserver"],
                users["camille.martin"]["user_id"],
                users["camille.martin"]["password"],
                tmp_path / "camille",
            )
            clients.append(camille)
            marie = await _login(
                facts["homeserver"],
                users["marie.durand"]["user_id"],
                users["marie.durand"]["password"],
                tmp_path / "marie",
            )
            clients.append(marie)
            dm = await open_direct_chat(camille, bot_id)
            await say(camille, dm, filled_form())
            await next_reply(camille, dm, bot_id, after=0)
            await say(camille, dm, "!confirmer")
            await next_reply(camille, dm, bot_id, after=1)

            await matrix.wait_for(
                lambda: _mail(folder, sophie["email"]) and _mail(folder, "bal@"), 60, "the mail"
            )
            [dossier] = _mail(folder, sophie["email"])
            assert "Dupontel" in dossier.get_body(("plain",)).get_content()
            reply_address = str(dossier["Reply-To"]).split("<")[-1].rstrip(">")

            # Answered by hand, as the welcome text explains.
            answer = (
                f"Authentication-Results: aplus-dev; dmarc=pass header.from={EMAIL_DEMO_DOMAIN}\r\n"
                f"From: Sophie Petit <{sophie['email']}>\r\nTo: {reply_address}\r\n"
                f"Subject: Re: {dossier['Subject']}\r\nMessage-ID: <main.1@{EMAIL_DEMO_DOMAIN}>\r\n"
                f"In-Reply-To: {dossier['Message-ID']}\r\n\r\n"
                "!jemenoccupe\r\nJe rappelle l'usager demain matin.\r\n"
            ).encode()
            code, _ = await send_mail(
                smtp["host"], smtp["port"], answer, rcpt=reply_address, mail_from=sophie["email"]
            )
            assert code == 250

            # The demande room, not her group's spaces (named « Administration+ · … »).
            def demande_rooms() -> list[str]:
                rooms = marie.invited_rooms.items()
                return [r for r, room in rooms if not room.name.startswith("Administration+")]

            await matrix.sync_until(marie, lambda: bool(demande_rooms()), what="an invite")
            [room_id] = demande_rooms()
            await matrix.accept_invite(marie, room_id)
            posted = await reply_with(marie, room_id, bot_id, "Je rappelle l'usager", wait=60)
            assert posted.startswith("Sophie Petit (CAF 95, par courriel)")
            assert await demo.stop(signal.SIGINT) == 0, demo.describe()
        finally:
            for client in clients:
                await matrix.close_client(client)
