"""Real SMTP peers on loopback for the email bridge tests.

`RelaySink` plays the organisation's relay: an aiosmtpd server on the test's own
event loop that keeps every message it accepts, and can be told to answer 4xx or
5xx, or be stopped and started again on the same port. `send_mail` is the agent's
mail system delivering a reply to the bot's listener (a real aiosmtplib client).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import make_msgid
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP

TRUSTED_AUTHSERV_ID = "aplus-dev"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float  # perf_counter when the sink answered 250

    @property
    def message(self) -> Message:
        return BytesParser(policy=policy.default).parsebytes(self.data)

    def header(self, name: str) -> str:
        return str(self.message.get(name, ""))

    @property
    def text(self) -> str:
        msg = self.message
        assert isinstance(msg, EmailMessage)
        body = msg.get_body(preferencelist=("plain",))
        return str(body.get_content()) if body is not None else ""


@dataclass
class RelaySink:
    """The relay. `answer`: None accepts; else the line given to every RCPT (e.g. a 451)."""

    host: str = "127.0.0.1"
    port: int = 0
    answer: str | None = None
    refuse: dict[str, str] = field(default_factory=dict)  # recipient → RCPT answer
    messages: list[Received] = field(default_factory=list)
    rcpt_attempts: int = 0
    _server: asyncio.Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _sessions: list[SMTP] = field(default_factory=list)

    async def start(self) -> RelaySink:
        loop = asyncio.get_running_loop()

        def session() -> SMTP:
            protocol = SMTP(self, hostname="relay.test", loop=loop)
            self._sessions.append(protocol)
            return protocol

        self._server = await loop.create_server(session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Connections still open are cut too (the relay went down).
            for protocol in self._sessions:
                if protocol.transport is not None:
                    protocol.transport.close()
            self._sessions.clear()
            await self._server.wait_closed()
            self._server = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpt_attempts += 1
        refusal = self.refuse.get(address.lower()) or self.answer
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                bytes(envelope.original_content),
                time.perf_counter(),
            )
        )
        self._arrived.set()
        return "250 2.0.0 Queued"

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.rcpt_tos)]

    async def wait_for(self, predicate: Any, wait: float = 30, what: str = "mail") -> None:
        """Until `predicate()` holds; fails (with `what`) after `wait` seconds."""
        deadline = time.monotonic() + wait
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"relay: still waiting after {wait} s for {what}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.2))


def reply_to(original: Received) -> str:
    """The reply address (Reply-To) of an email the bot sent."""
    value = original.header("Reply-To")
    return value.split("<")[-1].rstrip(">").strip()


def build_reply(
    original: Received | None,
    *,
    sender: str,
    text: str,
    to: str | None = None,
    authenticated: bool = True,
    authserv_id: str = TRUSTED_AUTHSERV_ID,
    message_id: str | None = None,
    extra_headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
) -> EmailMessage:
    """What an agent's mail client sends back: the answer on top, the original quoted."""
    msg = EmailMessage()
    if authenticated:
        domain = sender.rpartition("@")[2]
        msg["Authentication-Results"] = (
            f"{authserv_id}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}"
        )
    msg["From"] = sender
    msg["To"] = to or (reply_to(original) if original else "")
    msg["Subject"] = "Re: " + (original.header("Subject") if original else "demande")
    msg["Message-ID"] = message_id or make_msgid(domain="caf95.example.test")
    if original is not None:
        msg["In-Reply-To"] = original.header("Message-ID")
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    quoted = ""
    if original is not None:
        quoted = "\n\nLe 2 mars 2026 à 10:00, Administration+ a écrit :\n> " + "\n> ".join(
            original.text.splitlines()[:5]
        )
    msg.set_content(text + quoted)
    for filename, ctype, data in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


async def send_mail(
    host: str,
    port: int,
    message: EmailMessage | bytes,
    *,
    rcpt: str,
    mail_from: str,
) -> tuple[int, str]:
    """Deliver to the bot's listener; returns the final (code, text) or the refusal's."""
    data = message if isinstance(message, bytes) else message.as_bytes(policy=policy.SMTP)
    client = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        start_tls=False,
        timeout=30,
        local_hostname="mail.caf95.example.test",
    )
    await client.connect()
    try:
        # sendmail (not aiosmtplib.send): a bounce has an empty envelope sender.
        _, response = await client.sendmail(mail_from, [rcpt], data)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0]
        return refused.code, refused.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        if client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()
    return 250, response  # aiosmtplib gives the text of the final 250
