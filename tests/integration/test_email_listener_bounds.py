"""The listener refuses cheaply and bounds what a peer can make it hold.

The real listener (aiosmtpd on this loop) on a real SQLite store with a live reply
address, real SMTP clients on loopback; no homeserver is needed for what is decided
before posting. The cost of a mail is shown by what ran (the full parser is counted),
never by a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.services.clock import SystemClock
from bot.store import Store
from bot.store.crypto import FieldCipher, generate_key
from bridge.inbound import InboundHandler, listener, start_listener
from bridge.inbound.server import MAX_UNTERMINATED_BYTES
from tests.integration.test_email_store import _bridge, _reply, _settings
from tests.integration.test_store import NOW, new_demande, seed
from tests.support import databases
from tests.support.smtp import TRUSTED_AUTHSERV_ID, send_mail

PARTS = 40_000


@dataclass
class Listening:
    host: str
    port: int
    rcpt: str
    agent: str
    store: Store
    reference: str


@contextlib.asynccontextmanager
async def listening(
    tmp_path: Path,
    held: Callable[[], bool] = lambda: True,
    **email: Any,
) -> AsyncIterator[Listening]:
    # A database of its own each time (a test may start two listeners).
    store = await Store.open(databases.fresh_url(tmp_path), FieldCipher.from_secret(generate_key()))
    try:
        aidant, instructeur, _, g_caf = await seed(store)
        demande_id = await new_demande(store, aidant, [g_caf])
        bridge = await _bridge(store, tmp_path)
        async with store.transaction() as tx:
            await tx.add_participant(
                demande_id=demande_id, agent=instructeur, kind="instructeur", added_by="b", now=NOW
            )
            token = await bridge.reply_token(tx, demande_id, str(instructeur.email))
            demande = await tx.get_demande(demande_id)
        assert demande is not None
        settings = _settings(tmp_path, **email).email
        handler = InboundHandler(
            store=store,
            settings=settings,
            clock=SystemClock(),
            on_committed=lambda: None,
            wake_matrix=lambda: None,
            held=held,
        )
        server = await start_listener(handler, settings)
        host, port = server.sockets[0].getsockname()[:2]
        try:
            yield Listening(
                host,
                port,
                f"reply+{token}@reponse.aplus.test",
                str(instructeur.email),
                store,
                demande.reference,
            )
        finally:
            server.close()
            await server.wait_closed()
            handler.close()
    finally:
        await store.close()


def many_parts(sender: str, *, authenticated: bool, parts: int = PARTS) -> bytes:
    """The security review's mail (M4): 1.4 MB of empty MIME parts."""
    domain = sender.rpartition("@")[2]
    stamp = (
        f"Authentication-Results: {TRUSTED_AUTHSERV_ID}; dmarc=pass header.from={domain}\r\n"
        if authenticated
        else ""
    )
    head = (
        f"{stamp}From: <{sender}>\r\nTo: x\r\nSubject: Re\r\nMessage-ID: <m.{parts}@{domain}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    ).encode()
    return head + b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * parts + b"--b--\r\n"


@pytest.fixture
def full_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the listener ran the full MIME parse."""
    calls: list[int] = []
    real = listener.parse_inbound

    def counted(raw: bytes, **kwargs: Any) -> Any:
        calls.append(len(raw))
        return real(raw, **kwargs)

    monkeypatch.setattr(listener, "parse_inbound", counted)
    return calls


async def _audits(store: Store, reference: str) -> list[tuple[str, str]]:
    async with store.transaction() as tx:
        entries = await tx.audit_entries(reference=reference)
    return [(e.action, str(e.details.get("why", ""))) for e in entries]


async def test_a_hostile_mail_of_40000_parts_is_refused_without_being_parsed(
    tmp_path: Path, full_parses: list[int]
) -> None:
    async with listening(tmp_path) as lst:
        # A stranger who knows the address: refused on the headers alone.
        stranger = many_parts("pirate@attaquant.example", authenticated=False)
        assert len(stranger) > 1_400_000
        refused = await send_mail(
            lst.host, lst.port, stranger, rcpt=lst.rcpt, mail_from="pirate@attaquant.example"
        )
        assert refused == (550, "5.7.1 Sender not authorised for this recipient")
        # The agent's own, authenticated: refused on its structure, still not parsed.
        own = many_parts(lst.agent, authenticated=True)
        code, text = await send_mail(lst.host, lst.port, own, rcpt=lst.rcpt, mail_from=lst.agent)
        assert (code, text) == (554, "5.6.0 Message structure too complex (parts or header lines)")
        # A reply within bounds is parsed, once.
        small = many_parts(lst.agent, authenticated=True, parts=3)
        code, _ = await send_mail(lst.host, lst.port, small, rcpt=lst.rcpt, mail_from=lst.agent)
        assert code == 250
        assert full_parses == [len(small)]
        audits = await _audits(lst.store, lst.reference)
        assert ("email_refused", "sender is not the token's agent") in audits
        assert ("email_refused", "more than 500 MIME parts") in audits
        async with lst.store.transaction() as tx:
            [kept] = await tx.inbound_entries()
        assert kept.message_id is not None and kept.message_id.startswith("<m.3@")


async def test_unauthenticated_bounces_and_auto_replies_are_kept_unparsed_and_inert(
    tmp_path: Path, full_parses: list[int]
) -> None:
    async with listening(tmp_path) as lst:
        dsn = (
            b"From: MAILER-DAEMON@mx.attaquant.example\r\nSubject: Undelivered\r\n"
            b"Message-ID: <dsn@mx.attaquant.example>\r\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="D"\r\n\r\n'
            b"--D\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; x@y\r\nAction: failed\r\n"
            b"Status: 5.1.1\r\n\r\n--D--\r\n"
        )
        auto = (
            f"From: <{lst.agent}>\r\nSubject: Absent\r\nAuto-Submitted: auto-replied\r\n"
            "Message-ID: <ooo@caf.example.fr>\r\n\r\nJe suis absente.\r\n"
        ).encode()
        for data, sender in ((dsn, ""), (auto, lst.agent)):
            code, _ = await send_mail(lst.host, lst.port, data, rcpt=lst.rcpt, mail_from=sender)
            assert code == 250
        assert full_parses == []
        actions = [a for a, _ in await _audits(lst.store, lst.reference)]
        assert "email_bounce_unverified" in actions and "email_auto_ignored" in actions
        assert "email_bounce_received" not in actions
        async with lst.store.transaction() as tx:
            states = sorted((e.kind, e.state) for e in await tx.inbound_entries())
            assert await tx.recipient_failures(lst.agent) == 0
        assert states == [("auto_reply", "ignored"), ("bounce", "bounce")]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_data_line_without_crlf_is_cut_before_it_grows_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with listening(tmp_path, max_message_bytes=1024 * 1024) as lst:
        reader, writer = await asyncio.open_connection(lst.host, lst.port)
        try:

            async def say(line: str) -> str:
                writer.write(line.encode() + b"\r\n")
                await writer.drain()
                return await _reply(reader)

            assert (await _reply(reader)).startswith("220")
            assert (await say("EHLO mx.caf.example.fr")).startswith("250")
            assert (await say(f"MAIL FROM:<{lst.agent}>")).startswith("250")
            assert (await say(f"RCPT TO:<{lst.rcpt}>")).startswith("250")
            assert (await say("DATA")).startswith("354")
            before = _rss_kib()
            chunk = b"A" * (1024 * 1024)
            sent = 0
            with contextlib.suppress(ConnectionError):
                for _ in range(64):  # 64 MiB, one "line", where the limit is 1 MiB
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
            # The listener says why and hangs up (the line may be lost to the reset that
            # closing with our unread bytes causes; then only the hang-up is seen).
            answer = b""
            with contextlib.suppress(ConnectionError):
                answer = await asyncio.wait_for(reader.read(), 30)
            grown_kib = _rss_kib() - before
            assert answer in (b"", b"421 4.7.0 Line too long, closing connection\r\n"), answer
            assert reader.at_eof() or writer.is_closing()
        finally:
            writer.close()
        assert "passed 65536 bytes without CRLF: closed" in caplog.text
        # The listener kept at most the bound, whatever was sent.
        assert grown_kib < 16 * 1024, (grown_kib, sent)
        assert MAX_UNTERMINATED_BYTES < 1024 * 1024


async def test_only_allowed_peers_and_a_bounded_number_of_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def greeting(lst: Listening) -> tuple[bytes, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(lst.host, lst.port)
        return await asyncio.wait_for(reader.readline(), 30), writer

    async with listening(tmp_path, listen_allowed_peers=["192.0.2.0/24", "2001:db8::/32"]) as lst:
        with caplog.at_level(logging.WARNING, logger="bridge.inbound.server"):
            line, writer = await greeting(lst)
            writer.close()
        assert line == b"554 5.7.1 Connection refused: not an allowed peer\r\n"
        assert "connection from 127.0.0.1 refused: not in listen_allowed_peers" in caplog.text

    async with listening(tmp_path, listen_max_connections=2) as lst:
        first, w1 = await greeting(lst)
        second, w2 = await greeting(lst)
        third, w3 = await greeting(lst)
        assert first.startswith(b"220") and second.startswith(b"220")
        assert third == b"421 4.7.0 Too many connections, try again later\r\n"
        w1.close()
        await w1.wait_closed()
        w3.close()

        async def served() -> bool:
            line, writer = await greeting(lst)
            writer.close()
            return line.startswith(b"220")

        for _ in range(100):  # until the server has seen the first one go
            if await served():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("a freed slot was never given again")
        w2.close()


async def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    async with listening(tmp_path, listen_idle_timeout_seconds=5) as lst:
        reader, writer = await asyncio.open_connection(lst.host, lst.port)
        try:
            assert (await reader.readline()).startswith(b"220")
            # Nothing said: the listener hangs up by itself (aiosmtpd's default was 300 s).
            assert await asyncio.wait_for(reader.read(), 60) == b""
        finally:
            writer.close()


async def test_a_bot_that_does_not_hold_the_lease_answers_451_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    """Two processes, one active (`bot.services.lease`): no 250 from the other one."""
    holding = [False]
    async with listening(tmp_path, held=lambda: holding[0]) as lst:
        mail = many_parts(lst.agent, authenticated=True, parts=3)
        refused = await send_mail(lst.host, lst.port, mail, rcpt=lst.rcpt, mail_from=lst.agent)
        assert refused == (451, "4.3.0 Temporary failure, please try again later")
        async with lst.store.transaction() as tx:
            assert await tx.inbound_entries() == []
        holding[0] = True  # the lease is ours (again): the sender's retry goes through
        code, _ = await send_mail(lst.host, lst.port, mail, rcpt=lst.rcpt, mail_from=lst.agent)
        assert code == 250
        async with lst.store.transaction() as tx:
            assert len(await tx.inbound_entries()) == 1


async def test_a_bot_that_does_not_hold_the_lease_delivers_no_email(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Two processes, one active: the relay hears nothing from the other one, and the
    queued email stays due for whoever is active."""
    from bot.domain.lease import LeaseLost
    from bridge.delivery import EmailDelivery
    from tests.support.email import relay

    store = await Store.open(sqlite_url, FieldCipher.from_secret(generate_key()))
    holding = [False]
    try:
        async with relay() as sink:
            async with store.transaction() as tx:
                await tx.enqueue_email(
                    event_key="$ev1",
                    recipient="ivan@caf.example.fr",
                    kind="message",
                    demande_id=None,
                    author="@alice:aplus.test",
                    message_id="<ev.1@aplus.test>",
                    envelope_from="ne-pas-repondre@aplus.test",
                    message=b"Message-ID: <ev.1@aplus.test>\r\n\r\nBonjour\r\n",
                    now=SystemClock().now(),
                )
            delivery = EmailDelivery(
                store=store,
                settings=_settings(tmp_path, relay_port=sink.port, relay_security="none").email,
                clock=SystemClock(),
                wake_matrix=lambda: None,
                held=lambda: holding[0],
            )
            with pytest.raises(LeaseLost):
                await delivery.flush()
            assert sink.messages == []
            holding[0] = True
            assert await delivery.flush() == 1
            assert [m.header("Message-ID") for m in sink.messages] == ["<ev.1@aplus.test>"]
    finally:
        await store.close()
