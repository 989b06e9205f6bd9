"""The email bridge in scenario tests: a bot with the bridge on, the relay sink, replies.

The relay is an aiosmtpd sink on the test's loop (`tests.support.smtp.RelaySink`);
replies are sent to the bot's own listener by a real aiosmtplib client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.devserver import LocalSynapse
from bot.matrix.content import APLUS_KEY
from tests.support import bot as botsupport
from tests.support import matrix
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
