"""The email bridge in scenario tests: a bot with the bridge on, the relay sink, replies.

The relay is an aiosmtpd sink on the test's loop (`tests.support.smtp.RelaySink`);
replies are sent to the bot's own listener by a real aiosmtplib client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import nio

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from bot.matrix.content import APLUS_KEY
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.process import BotFiles
from tests.support.smtp import Received, RelaySink, build_reply, send_mail
from tests.support.world import World

REPLY_DOMAIN = "reponse.aplus.test"


@contextlib.asynccontextmanager
async def email_bot(
    synapse: LocalSynapse, data_dir: Path, sink: RelaySink, **email: Any
) -> AsyncIterator[botsupport.BotRunner]:
    runner = await botsupport.new_bot(synapse, data_dir)
    runner.email = {"relay_port": sink.port, **email}
    try:
        yield runner
    finally:
        await runner.stop()


@contextlib.asynccontextmanager
async def relay() -> AsyncIterator[RelaySink]:
    sink = await RelaySink().start()
    try:
        yield sink
    finally:
        await sink.stop()


def mailonly(world: World) -> str:
    email = world.directory.agents["mailonly"].email
    assert email is not None
    return email


def listener(runner: botsupport.BotRunner) -> tuple[str, int]:
    assert runner.app is not None and runner.app.email is not None
    return runner.app.email.address


async def reply(
    runner: botsupport.BotRunner, original: Received | None, sender: str, text: str, **kw: Any
) -> tuple[int, str]:
    """The agent answers the email `original` (to its Reply-To unless `to=` says otherwise)."""
    message = build_reply(original, sender=sender, text=text, **kw)
    host, port = listener(runner)
    return await send_mail(host, port, message, rcpt=str(message["To"]), mail_from=sender)


def bridged(client: Any, room_id: str, bot_id: str) -> list[Any]:
    """Messages the bot posted on behalf of email-only agents, as a member decrypted them."""
    return [
        e
        for e in matrix.inbox(client).events(room_id)
        if e.sender == bot_id and "bridged" in (e.source.get("content", {}).get(APLUS_KEY) or {})
    ]


@dataclass(frozen=True)
class Eml:
    """An email as a mail client shows it: headers, the plain text and the HTML part."""

    subject: str
    message_id: str
    in_reply_to: str
    references: str
    reply_to: str
    text: str
    html: str


def as_eml(received: Received, reference: str, *, room_id: str | None, root: str) -> Eml:
    """Checks what every email of a demande must be, and returns what it shows.

    One thread (`root` first in References, or the root itself); a subject with the
    reference and no usager data; a text part and an HTML part; links in the HTML only,
    one of them to the demande's room when `room_id` is given."""
    msg = BytesParser(policy=policy.default).parsebytes(received.data)
    assert isinstance(msg, EmailMessage)
    subject = str(msg["Subject"])
    assert subject.startswith(f"[A+] Demande {reference}"), subject
    for personal in USAGER_WORDS:
        assert personal not in subject, subject
    message_id = str(msg["Message-ID"])
    references = str(msg.get("References", ""))
    if message_id != root:
        assert references.split()[0] == root, references
        assert str(msg["In-Reply-To"]) == references.split()[-1]
    plain = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert plain is not None and html is not None, "a text part and an HTML part"
    text, markup = str(plain.get_content()), str(html.get_content())
    assert "http://" not in text and "https://" not in text, "a link-free text part"
    if room_id is not None:
        assert f'href="https://matrix.to/#/{room_id}"' in markup, markup[-600:]
    return Eml(
        subject=subject,
        message_id=message_id,
        in_reply_to=str(msg.get("In-Reply-To", "")),
        references=references,
        reply_to=str(msg.get("Reply-To", "")),
        text=text,
        html=markup,
    )


# What `tests.support.bot.filled_form` puts in the dossier about the usager.
USAGER_WORDS = ("Dupontel", "Jeanne")


def email_section(
    relay_port: int, listen_port: int, *, retry_initial_seconds: int | None = 1
) -> str:
    """The `[email]` section of a bot process's configuration: the relay sink on
    `relay_port`, the listener on `listen_port`. ``retry_initial_seconds``: the first
    delivery retry (a second, so that a test sees it); None keeps the bridge's default."""
    lines = [
        "",
        "[email]",
        "enabled = true",
        'from_address = "ne-pas-repondre@aplus.test"',
        'reply_domain = "reponse.aplus.test"',
        'relay_host = "127.0.0.1"',
        f"relay_port = {relay_port}",
        'relay_security = "none"',
        'listen_host = "127.0.0.1"',
        f"listen_port = {listen_port}",
        'trusted_authserv_ids = ["aplus-dev"]',
    ]
    if retry_initial_seconds is not None:
        lines.append(f"retry_initial_seconds = {retry_initial_seconds}")
    return "\n".join([*lines, ""])


# -- the bridge of a real `aplus` process (tests/integration/test_email_faults.py and
# test_failover_email.py): an aidant, a Matrix instructeur and Sophie, email-only.


async def seed_email_only_instructeur(
    files: BotFiles, aidant: nio.AsyncClient, instr: nio.AsyncClient
) -> str:
    """The aidant (France services, 95) and two instructeurs of the CAF (95): `instr` on
    Matrix and Sophie by email only. Returns Sophie's address."""
    sophie = f"{matrix.unique('sophie')}@caf95.example.test"
    directory = botsupport.Directory()
    async with files.store() as store:
        await botsupport.add_group(store, directory, "fs", "france_services", ["95"])
        await botsupport.add_group(store, directory, "caf", "caf", ["95"])
        await botsupport.add_agent(
            store, directory, "aidant", matrix_id=aidant.user_id, roles=[Role.AIDANT], group="fs"
        )
        await botsupport.add_agent(
            store,
            directory,
            "instr",
            matrix_id=instr.user_id,
            roles=[Role.INSTRUCTEUR],
            group="caf",
        )
        await botsupport.add_agent(
            store,
            directory,
            "sophie",
            matrix_id=None,
            email=sophie,
            roles=[Role.INSTRUCTEUR],
            group="caf",
            first_name="Sophie",
        )
    return sophie


async def dossier_by_email(
    files: BotFiles,
    aidant: nio.AsyncClient,
    instr: nio.AsyncClient,
    sink: RelaySink,
    sophie: str,
) -> tuple[Received, str]:
    """The aidant opens a demande with the running bot; returns the dossier email Sophie
    got and the demande's room, which `instr` has joined and read."""
    dm = await botsupport.open_direct_chat(aidant, files.user_id)
    await botsupport.say(aidant, dm, botsupport.filled_form())
    await botsupport.next_reply(aidant, dm, files.user_id, after=0)
    await botsupport.say(aidant, dm, "!confirmer")
    await sink.wait_for(lambda: sink.to(sophie), 60, what="the dossier email")
    [dossier] = sink.to(sophie)
    async with files.store() as store, store.transaction() as tx:
        [demande] = await tx.list_demandes()
    room_id = demande.room_id
    assert room_id is not None
    await matrix.join_and_read(instr, room_id, 1)
    return dossier, room_id
