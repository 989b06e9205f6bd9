"""The email bridge's store (both backends) and its listener without a homeserver
(reply-address liveness, idempotent queues, sealed bodies, LMTP)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bot.domain.policies import Policies
from bot.policy_loader import load_policies
from bot.ports import PoliciesRef
from bot.services.clock import SystemClock
from bot.settings import REPO_POLICIES_DIR, Settings
from bot.store import Store
from bridge.addressing import token_digest
from bridge.inbound import InboundHandler, start_listener
from bridge.outbound import EmailBridge
from tests.integration.test_store import NOM, NOW, PRENOM, new_demande, seed

SECRETS = {
    "APLUS_BOT_PASSWORD": "mot-de-passe",
    "APLUS_PICKLE_KEY": "x" * 24,
    "APLUS_DATA_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
}


def _settings(tmp_path: Path, **email: object) -> Settings:
    return Settings.for_dev(
        tmp_path, "http://127.0.0.1:8008", "localhost", "@aplus:localhost", SECRETS, email=email
    )


def _policies() -> Policies:
    return load_policies(REPO_POLICIES_DIR)


async def _no_fetch(content: Any, *, max_bytes: int | None = None) -> tuple[str, str, bytes]:
    raise AssertionError("no attachment is fetched in these tests")


async def _bridge(store: Store, tmp_path: Path) -> EmailBridge:
    bridge = EmailBridge(
        settings=_settings(tmp_path).email,
        store=store,
        policies=PoliciesRef(_policies()),
        clock=SystemClock(),
        fetch_attachment=_no_fetch,
        wake_delivery=lambda: None,
    )
    await bridge.load_key()
    return bridge


async def test_reply_addresses_live_only_while_the_agent_takes_part(
    store: Store, tmp_path: Path
) -> None:
    aidant, instructeur, _, g_caf = await seed(store)
    demande_id = await new_demande(store, aidant, [g_caf])
    bridge = await _bridge(store, tmp_path)
    address = str(instructeur.email)
    async with store.transaction() as tx:
        await tx.add_participant(
            demande_id=demande_id, agent=instructeur, kind="instructeur", added_by="bot", now=NOW
        )
        token = await bridge.reply_token(tx, demande_id, address)
        assert await bridge.reply_token(tx, demande_id, address) == token  # stable
    digest = token_digest(token)
    async with store.transaction() as tx:
        binding = await tx.reply_token_binding(digest)
        assert binding is not None and binding.agent_email == address
        assert binding.demande_id == demande_id and binding.participant_kind == "instructeur"
        # Leaving the demande revokes it, in the same transaction.
        assert await tx.remove_participant(demande_id=demande_id, agent_id=instructeur.id, now=NOW)
        assert await tx.reply_token_binding(digest) is None
    async with store.transaction() as tx:  # back again: a new address, the old one stays dead
        await tx.add_participant(
            demande_id=demande_id, agent=instructeur, kind="invite", added_by="bot", now=NOW
        )
        again = await bridge.reply_token(tx, demande_id, address)
        assert again != token and await tx.reply_token_binding(digest) is None
        assert await tx.reply_token_binding(token_digest(again)) is not None
        # A deactivated agent's address answers nothing either.
        await tx.set_agent_active(instructeur.id, False)
        assert await tx.reply_token_binding(token_digest(again)) is None
    async with store.transaction() as tx:  # only digests are stored
        stored = (await tx._s.execute(text("SELECT digest FROM email_reply_tokens"))).all()
        assert token not in repr(stored) and again not in repr(stored)


async def test_outbox_is_idempotent_retries_and_fails_once(store: Store) -> None:
    aidant, _, _, g_caf = await seed(store)
    demande_id = await new_demande(store, aidant, [g_caf])
    body = f"Dossier de {PRENOM} {NOM}".encode()
    async with store.transaction() as tx:
        for _ in range(2):
            queued = await tx.enqueue_email(
                event_key="$ev1",
                recipient="Ivan@CAF.example.fr",
                kind="message",
                demande_id=demande_id,
                author="@alice:aplus.test",
                message_id="<ev.1@aplus.test>",
                envelope_from="ne-pas-repondre@aplus.test",
                message=body,
                now=NOW,
            )
        assert queued is False  # the second one
    async with store.transaction() as tx:
        [due] = await tx.due_emails(NOW)
        assert due.recipient == "ivan@caf.example.fr" and due.message == body
        await tx.email_retry_later(due.id, error="451", at=NOW + timedelta(minutes=1))
        assert await tx.due_emails(NOW) == []
        assert await tx.next_email_due() == NOW + timedelta(minutes=1)
        assert await tx.email_failed(due.id, error="550", now=NOW)
        assert not await tx.email_failed(due.id, error="550", now=NOW)  # told once
        [state] = await tx.email_states(demande_id=demande_id)
        assert state.attempts == 2 and state.failed_at == NOW and state.last_error == "550"
        assert await tx.next_email_due() is None
        assert await tx.mark_recipient_failing("ivan@caf.example.fr", "550", NOW) == 1
        assert await tx.mark_recipient_failing("IVAN@caf.example.fr", "bounce", NOW) == 2


async def test_inbox_dedup_and_sealed_bodies(store: Store) -> None:
    aidant, _, _, g_caf = await seed(store)
    demande_id = await new_demande(store, aidant, [g_caf])
    raw = f"From: ivan@caf.example.fr\r\n\r\nL'usager {PRENOM} {NOM} est rappelé.\r\n".encode()
    async with store.transaction() as tx:
        common = {
            "token_digest": "d" * 64,
            "demande_id": demande_id,
            "agent_email": "ivan@caf.example.fr",
            "sender": "ivan@caf.example.fr",
            "content_hash": "h" * 64,
            "kind": "human",
            "state": "pending",
            "raw": raw,
            "now": NOW,
        }
        assert await tx.add_inbound(key="k1", message_id="<m.1@caf>", **common)  # type: ignore[arg-type]
        assert not await tx.add_inbound(key="k2", message_id="<m.1@caf>", **common)  # type: ignore[arg-type]
        seen = await tx.inbound_seen(
            token_digest="d" * 64, message_id="<m.2@caf>", content_hash="h" * 64, since=NOW
        )
        assert seen  # same content lately
        [pending] = await tx.pending_inbound()
        assert await tx.inbound_raw(pending.key) == raw
        await tx.set_inbound_uploads("k1", [{"file": {"url": "mxc://x/y"}}])
        await tx.mark_inbound("k1", "posted", now=NOW)
        assert await tx.inbound_awaiting_event() != []
        await tx.mark_inbound("k1", "posted", now=NOW, event_id="$posted")
        [done] = await tx.inbound_entries()
        assert done.event_id == "$posted" and done.uploads == [{"file": {"url": "mxc://x/y"}}]
        rows = (await tx._s.execute(text("SELECT raw_enc FROM email_inbox"))).all()
    for needle in (PRENOM, NOM):
        assert needle.encode() not in b"".join(bytes(r[0]) for r in rows)


async def test_lmtp_listener_refuses_unknown_and_takes_a_live_address(
    store_url: str, tmp_path: Path
) -> None:
    from bot.store.crypto import FieldCipher, generate_key

    store = await Store.open(store_url, FieldCipher.from_secret(generate_key()))
    try:
        aidant, instructeur, _, g_caf = await seed(store)
        demande_id = await new_demande(store, aidant, [g_caf])
        bridge = await _bridge(store, tmp_path)
        async with store.transaction() as tx:
            await tx.add_participant(
                demande_id=demande_id, agent=instructeur, kind="instructeur", added_by="b", now=NOW
            )
            token = await bridge.reply_token(tx, demande_id, str(instructeur.email))
        settings = _settings(tmp_path, listen_protocol="lmtp").email
        committed: list[int] = []
        handler = InboundHandler(
            store=store,
            settings=settings,
            clock=SystemClock(),
            on_committed=lambda: committed.append(1),
            wake_matrix=lambda: None,
        )
        server = await start_listener(handler, settings)
        host, port = server.sockets[0].getsockname()[:2]
        try:
            reader, writer = await asyncio.open_connection(host, port)

            async def say(line: str) -> str:
                writer.write(line.encode() + b"\r\n")
                await writer.drain()
                return await _reply(reader)

            assert (await _reply(reader)).startswith("220")
            assert (await say("LHLO mx.caf.example.fr")).startswith("250")
            assert (await say("MAIL FROM:<ivan@caf.example.fr>")).startswith("250")
            unknown = "reply+" + "b" * 32 + "@reponse.aplus.test"
            assert await say(f"RCPT TO:<{unknown}>") == "550 5.1.1 No such recipient here"
            rcpt = f"reply+{token}@reponse.aplus.test"
            assert (await say(f"RCPT TO:<{rcpt}>")).startswith("250")
            assert (await say("DATA")).startswith("354")
            message = (
                "Authentication-Results: aplus-dev; dmarc=pass header.from=caf.example.fr\r\n"
                f"From: Ivan <ivan@caf.example.fr>\r\nTo: {rcpt}\r\n"
                "Message-ID: <lmtp.1@caf.example.fr>\r\nSubject: Re\r\n\r\nC'est noté.\r\n."
            )
            assert (await say(message)).startswith("250")
            await say("QUIT")
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
        assert committed == [1]
        async with store.transaction() as tx:
            [entry] = await tx.inbound_entries()
        assert entry.state == "pending" and entry.demande_id == demande_id
    finally:
        await store.close()


async def _reply(reader: asyncio.StreamReader) -> str:
    """One (possibly multi-line) SMTP reply; its last line."""
    while True:
        line = (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip("\r\n")
        if len(line) < 4 or line[3] != "-":
            return line


async def test_listener_checks_dkim_itself_when_configured(store_url: str, tmp_path: Path) -> None:
    import dkim

    from bot.store.crypto import FieldCipher, generate_key
    from tests.support.smtp import send_mail
    from tests.unit.test_email_settings_dkim import _dns, _key

    store = await Store.open(store_url, FieldCipher.from_secret(generate_key()))
    try:
        aidant, instructeur, _, g_caf = await seed(store)
        demande_id = await new_demande(store, aidant, [g_caf])
        bridge = await _bridge(store, tmp_path)
        async with store.transaction() as tx:
            await tx.add_participant(
                demande_id=demande_id, agent=instructeur, kind="instructeur", added_by="b", now=NOW
            )
            token = await bridge.reply_token(tx, demande_id, str(instructeur.email))
        # No trusted Authentication-Results at all: only our own DKIM check can pass a reply.
        settings = _settings(tmp_path, trusted_authserv_ids=[], dkim_verify=True).email
        pem, record = _key()
        handler = InboundHandler(
            store=store,
            settings=settings,
            clock=SystemClock(),
            on_committed=lambda: None,
            wake_matrix=lambda: None,
            dkim_dns=_dns({b"s1._domainkey.caf.example.fr.": record}),
        )
        server = await start_listener(handler, settings)
        host, port = server.sockets[0].getsockname()[:2]
        rcpt = f"reply+{token}@reponse.aplus.test"

        def reply(n: int) -> bytes:
            return (
                f"From: Ivan <ivan@caf.example.fr>\r\nTo: {rcpt}\r\nSubject: Re\r\n"
                f"Message-ID: <dkim.{n}@caf.example.fr>\r\n\r\nReponse {n}.\r\n"
            ).encode()

        try:
            signed = dkim.sign(reply(1), b"s1", b"caf.example.fr", pem.encode()) + reply(1)
            answers = [
                await send_mail(host, port, data, rcpt=rcpt, mail_from="ivan@caf.example.fr")
                for data in (reply(2), signed.replace(b"Reponse 1", b"Reponse 9"), signed)
            ]
        finally:
            server.close()
            await server.wait_closed()
        refused = (550, "5.7.1 Sender not authorised for this recipient")
        assert answers[:2] == [refused, refused] and answers[2][0] == 250
        async with store.transaction() as tx:
            [entry] = await tx.inbound_entries()
        assert entry.message_id == "<dkim.1@caf.example.fr>"
    finally:
        await store.close()
