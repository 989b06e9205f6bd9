"""The email bridge end to end: real Synapse, real bot, real SMTP peers on loopback.

The relay is an aiosmtpd sink on the test's loop (`tests.support.smtp.RelaySink`);
replies are sent to the bot's own listener by a real aiosmtplib client; the
participants read the room with their own E2EE nio clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.devserver import LocalSynapse
from bot.domain.model import Status
from bot.matrix.content import APLUS_KEY
from tests.support import bot as botsupport
from tests.support import matrix
from tests.support.bot import count_from, reply_with, say
from tests.support.email import REPLY_DOMAIN, bridged, email_bot, listener, mailonly, relay, reply
from tests.support.smtp import TRUSTED_AUTHSERV_ID, Received, build_reply, reply_to, send_mail
from tests.support.world import demande_of, make_world, open_demande


async def test_round_trip_matrix_email_reply_matrix(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        room_id = demande.room_id

        # The dossier reaches the email-only instructeur, threaded, without personal data
        # in the subject, with her own reply address.
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
        [dossier] = sink.to(sophie)
        subject = dossier.header("Subject")
        assert subject.startswith(f"[A+] Demande {reference}") and "nouvelle demande" in subject
        assert "Dupontel" not in subject and "Jeanne" not in subject
        assert "Dupontel" in dossier.text
        token_address = reply_to(dossier)
        assert token_address.startswith("reply+") and token_address.endswith("@" + REPLY_DOMAIN)
        assert dossier.mail_from == token_address  # bounces come back to her address
        assert dossier.header("Auto-Submitted") == ""

        # A Matrix message reaches her, in the same thread.
        await matrix.join_and_read(world.instr1, room_id, 1)
        await say(world.instr1, room_id, "Bonjour, pouvez-vous vérifier le dossier CAF ?")
        await sink.wait_for(lambda: len(sink.to(sophie)) >= 2, what="the message email")
        message = sink.to(sophie)[1]
        assert "pouvez-vous vérifier" in message.text and "nouveau message" in message.header(
            "Subject"
        )
        assert dossier.header("Message-ID") in message.header("References")

        # She answers with a quick answer and a sentence; the quote is not posted.
        n = count_from(world.instr1, room_id, world.bot_id)
        code, _ = await reply(
            runner, message, sophie, "!jemenoccupe\nJe regarde cela cet après-midi."
        )
        assert code == 250
        posted = await reply_with(
            world.instr1, room_id, world.bot_id, "par courriel", after=n, wait=30
        )
        assert posted.startswith("Sophie Test (")
        assert "Je regarde cela cet après-midi." in posted and "a écrit" not in posted
        await reply_with(world.instr1, room_id, world.bot_id, "s'occupe de la demande", after=n)
        [event] = bridged(world.instr1, room_id, world.bot_id)
        identity = event.source["content"][APLUS_KEY]["bridged"]
        assert identity["email"] == sophie and identity["via"] == "email"
        assert "<strong>Sophie Test" in event.source["content"]["formatted_body"]
        assert (await demande_of(world, reference)).status == Status.EN_COURS

        # Her answer goes by email to nobody else here (the others read Matrix), not back to her.
        assert len(sink.to(sophie)) == 2
        await runner.check_alive()


def dsn_for(original: Received, address: str, *, authenticated: bool = True) -> bytes:
    """The bounce a recipient's mail system sends back for `original` (RFC 3464), signed by
    that system and vouched for by our MTA (`authenticated`), or forged by anyone."""
    mx = "mx.caf95.example.test"
    stamp = (
        f"Authentication-Results: {TRUSTED_AUTHSERV_ID}; dkim=pass header.d={mx}; "
        f"dmarc=pass header.from={mx}\r\n"
        if authenticated
        else ""
    )
    return (
        stamp + "Return-Path: <>\r\n"
        "From: Mail Delivery System <MAILER-DAEMON@mx.caf95.example.test>\r\n"
        f"To: {original.mail_from}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        f"Message-ID: <dsn.{'signed' if authenticated else 'forged'}@{mx}>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="D"\r\n\r\n'
        "--D\r\nContent-Type: text/plain\r\n\r\nMailbox full.\r\n"
        "--D\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.caf95.example.test\r\n\r\n"
        f"Final-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n"
        "--D\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {original.header('Message-ID')}\r\nSubject: x\r\n\r\n"
        "--D--\r\n"
    ).encode()


async def test_reply_addresses_senders_automation_and_duplicates(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with (
        relay() as sink,
        email_bot(synapse, tmp_path / "bot", sink, max_message_bytes=200_000) as runner,
    ):
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        _, reference = await open_demande(world)
        demande = await demande_of(world, reference)
        room_id = demande.room_id
        await matrix.join_and_read(world.instr1, room_id, 1)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
        [dossier] = sink.to(sophie)
        address = reply_to(dossier)
        host, port = listener(runner)

        async def status() -> Status:
            return (await demande_of(world, reference)).status

        async def audited(action: str) -> int:
            async with runner.store.transaction() as tx:
                return len(await tx.audit_entries(reference=reference, action=action))

        # Unknown, guessed, malformed, other domain: one and the same answer.
        guessed = "reply+" + "a" * 32 + "@" + REPLY_DOMAIN
        answers = set()
        for rcpt in (
            guessed,
            address.replace("reply+", "reply+x"),
            "reply+abc@" + REPLY_DOMAIN,
            address.split("@")[0] + "@autre.example.test",
            "postmaster@" + REPLY_DOMAIN,
        ):
            message = build_reply(dossier, sender=sophie, text="Bonjour", to=rcpt)
            answers.add(await send_mail(host, port, message, rcpt=rcpt, mail_from=sophie))
        assert answers == {(550, "5.1.1 No such recipient here")}, answers

        # Valid address, someone else's From; the right From, unauthenticated or vouched
        # for by an untrusted server: refused, audited, nothing kept or posted.
        refusals = set()
        for sender, kw in (
            ("pirate@caf95.example.test", {}),
            (sophie, {"authenticated": False}),
            (sophie, {"authserv_id": "mx.pirate.example"}),
            (f"Sophie <{sophie}>, pirate@example.test", {}),
        ):
            refusals.add(await reply(runner, dossier, sender, "!traitee", **kw))
        assert refusals == {(550, "5.7.1 Sender not authorised for this recipient")}
        assert await audited("email_refused") == 4
        assert await status() == Status.NOUVELLE

        # Too big for the listener: 552, nothing kept.
        big = build_reply(dossier, sender=sophie, text="x" * 300_000)
        code, _ = await send_mail(host, port, big, rcpt=address, mail_from=sophie)
        assert code == 552

        # An out-of-office reply and a list message: accepted, never posted.
        for headers in ({"Auto-Submitted": "auto-replied"}, {"Precedence": "list"}):
            code, _ = await reply(
                runner, dossier, sophie, "Je suis absente.", extra_headers=headers
            )
            assert code == 250
        assert await audited("email_auto_ignored") == 2

        # A bounce anyone could have written (no authentication): accepted, kept, audited,
        # and without effect: nobody marked failing, nothing told (it is committed at 250).
        forged = dsn_for(dossier, sophie, authenticated=False)
        code, _ = await send_mail(host, port, forged, rcpt=address, mail_from="")
        assert code == 250
        assert await audited("email_bounce_unverified") == 1
        async with runner.store.transaction() as tx:
            assert await tx.recipient_failures(sophie) == 0

        # A bounce of the dossier from her mail system: the address marked failing, the
        # room told.
        n = count_from(world.instr1, room_id, world.bot_id)
        code, _ = await send_mail(host, port, dsn_for(dossier, sophie), rcpt=address, mail_from="")
        assert code == 250
        notice = await reply_with(world.instr1, room_id, world.bot_id, "pas pu être remis", after=n)
        assert sophie in notice
        async with runner.store.transaction() as tx:
            assert await tx.recipient_failures(sophie) == 1
            kinds = sorted((e.kind, e.state) for e in await tx.inbound_entries())
        assert kinds == [
            ("auto_reply", "ignored"),
            ("bounce", "bounce"),
            ("bounce", "bounce"),
            ("list", "ignored"),
        ]

        # The same reply delivered twice (an MTA retry), and once more with a new
        # Message-ID but the same content: posted once.
        first = build_reply(dossier, sender=sophie, text="Dossier reçu, je regarde.")
        again = build_reply(dossier, sender=sophie, text="Dossier reçu, je regarde.")
        for message in (first, first, again):
            code, _ = await send_mail(host, port, message, rcpt=address, mail_from=sophie)
            assert code == 250
        await reply_with(world.instr1, room_id, world.bot_id, "Dossier reçu", after=n)
        # A later, different reply proves the worker went past the duplicates.
        await reply(runner, dossier, sophie, "!traitee")
        await reply_with(world.instr1, room_id, world.bot_id, "a traité la demande", after=n)
        assert await status() == Status.TRAITEE
        posted = [e.body for e in bridged(world.instr1, room_id, world.bot_id)]
        assert len(posted) == 2 and "Dossier reçu" in posted[0], posted
        assert [e.state for e in await _inbox(runner)].count("posted") == 2

        # Leaving the demande revokes the address: same answer as an unknown one.
        async with runner.store.transaction() as tx:
            agent = world.directory.agents["mailonly"]
            assert await tx.remove_participant(
                demande_id=demande.id,
                agent_id=agent.id,
                now=runner.app.clock.now(),  # type: ignore[union-attr]
            )
        code, text = await reply(runner, dossier, sophie, "Encore moi")
        assert (code, text) == (550, "5.1.1 No such recipient here")
        await runner.check_alive()


async def _inbox(runner: botsupport.BotRunner) -> list[Any]:
    async with runner.store.transaction() as tx:
        return list(await tx.inbound_entries())


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


async def _download(client: Any, content: dict[str, Any]) -> bytes:
    """The plaintext of an encrypted file, fetched as a test client's account."""
    import aiohttp

    from bot.matrix import attachments as files

    ref = files.parse_encrypted_file(content)
    server, media_id = ref.server_and_media_id
    url = f"{client.homeserver}/_matrix/client/v1/media/download/{server}/{media_id}"
    headers = {"Authorization": f"Bearer {client.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, resp.status
        return files.decrypt(ref, await resp.read())


async def _send_file(client: Any, room_id: str, name: str, data: bytes) -> str:
    import io

    import nio

    upload, keys = await client.upload(
        io.BytesIO(data), "application/pdf", name, encrypt=True, filesize=len(data)
    )
    assert isinstance(upload, nio.UploadResponse), upload
    content = {
        "msgtype": "m.file",
        "body": name,
        "filename": name,
        "info": {"mimetype": "application/pdf", "size": len(data)},
        "file": {"url": upload.content_uri, **(keys or {})},
    }
    resp = await client.room_send(
        room_id, "m.room.message", content, ignore_unverified_devices=True
    )
    assert isinstance(resp, nio.RoomSendResponse), resp
    return str(resp.event_id)


async def test_conversation_edits_redactions_files_status_and_notifications(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    import nio

    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        instr2_email = f"{matrix.unique('instr2')}@caf95.example.test"
        async with runner.store.transaction() as tx:  # instr2 gets an address
            await tx.upsert_agent(
                first_name="Instr2",
                last_name="Test",
                email=instr2_email,
                matrix_id=world.instr2.user_id,
                group_id=world.directory.groups["caf"].id,
                roles=frozenset(world.directory.agents["instr2"].roles),
            )
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        for client in (world.aidant, world.instr1, world.instr2):
            await matrix.join_and_read(client, room_id, 1)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
        assert sink.to(instr2_email) == []  # a Matrix participant: nothing unless asked

        # instr2 asks for notices by email.
        n2 = count_from(world.instr2, room_id, world.bot_id)
        await say(world.instr2, room_id, "!notifications oui")
        await reply_with(world.instr2, room_id, world.bot_id, instr2_email, after=n2)

        # A message, then its correction, then its withdrawal.
        original = await say(world.aidant, room_id, "Le courrier de la CAF date du 3 mars.")
        await sink.wait_for(lambda: len(sink.to(sophie)) >= 2, what="the message")
        assert "3 mars" in sink.to(sophie)[1].text
        await sink.wait_for(lambda: sink.to(instr2_email), what="instr2's notice")
        [notice] = sink.to(instr2_email)
        assert "3 mars" not in notice.data.decode() and "Matrix" in notice.text
        assert notice.header("Reply-To") == "" and notice.header("Auto-Submitted")
        edit = {
            "msgtype": "m.text",
            "body": "* Le courrier de la CAF date du 4 mars.",
            "m.new_content": {"msgtype": "m.text", "body": "Le courrier de la CAF date du 4 mars."},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        }
        resp = await world.aidant.room_send(
            room_id, "m.room.message", edit, ignore_unverified_devices=True
        )
        assert isinstance(resp, nio.RoomSendResponse)
        await sink.wait_for(lambda: len(sink.to(sophie)) >= 3, what="the correction")
        correction = sink.to(sophie)[2]
        assert "corrigé" in correction.text and "4 mars" in correction.text
        assert sink.to(sophie)[1].header("Message-ID") in correction.header("References")
        redacted = await world.aidant.room_redact(room_id, original, reason="erreur")
        assert isinstance(redacted, nio.RoomRedactResponse)
        await sink.wait_for(lambda: len(sink.to(sophie)) >= 4, what="the withdrawal")
        assert "retiré" in sink.to(sophie)[3].text

        # A file from Matrix reaches her as an attachment.
        await _send_file(world.instr1, room_id, "attestation.pdf", PDF)
        await sink.wait_for(lambda: len(sink.to(sophie)) >= 5, what="the file")
        attached = [
            part.get_content()
            for part in sink.to(sophie)[4].message.iter_attachments()  # type: ignore[attr-defined]
        ]
        assert attached == [PDF]

        # Her answer with a PDF: the file arrives encrypted in the room, readable.
        files: list[Any] = []
        world.instr1.add_event_callback(
            lambda room, event: files.append(event), nio.RoomEncryptedFile
        )
        n = count_from(world.instr1, room_id, world.bot_id)
        code, _ = await reply(
            runner,
            sink.to(sophie)[4],
            sophie,
            "Voici la notification de droits.",
            attachments=[("notification.pdf", "application/pdf", PDF)],
        )
        assert code == 250
        await reply_with(world.instr1, room_id, world.bot_id, "notification de droits", after=n)
        await matrix.sync_until(world.instr1, lambda: bool(files), what="the bridged file")
        assert await _download(world.instr1, files[0].source["content"]) == PDF

        # Closing and reopening are told by email.
        before = len(sink.to(sophie))
        await say(world.aidant, room_id, "!clore utile")
        await sink.wait_for(lambda: len(sink.to(sophie)) > before, what="the closing")
        assert "clôturée" in sink.to(sophie)[-1].header("Subject")
        await say(world.aidant, room_id, "!rouvrir")
        await sink.wait_for(lambda: len(sink.to(sophie)) > before + 1, what="the reopening")
        assert "rouverte" in sink.to(sophie)[-1].header("Subject")

        # Inviting a group brings its email-only agent and its BAL the dossier.
        bal = f"{matrix.unique('bal')}@cpam95.example.test"
        paul = f"{matrix.unique('paul')}@cpam95.example.test"
        async with runner.store.transaction() as tx:
            cpam = await tx.upsert_group(
                name=matrix.unique("cpam-bal"),
                organisation_id="cpam",
                departements=frozenset({"95"}),
                bal=bal,
            )
            await tx.upsert_agent(
                first_name="Paul",
                last_name="Test",
                email=paul,
                matrix_id=None,
                group_id=cpam.id,
                roles=frozenset(world.directory.agents["instr1"].roles),
            )
        n = count_from(world.instr1, room_id, world.bot_id)
        await say(world.instr1, room_id, f"!inviter {cpam.name}")
        await reply_with(world.instr1, room_id, world.bot_id, "Invité", after=n)
        await sink.wait_for(lambda: sink.to(paul) and sink.to(bal), what="the dossiers")
        assert "Dupontel" in sink.to(paul)[0].text and reply_to(sink.to(paul)[0])
        assert "Dupontel" in sink.to(bal)[0].text and sink.to(bal)[0].header("Reply-To") == ""
        # Sophie, already there, is told who came.
        await sink.wait_for(
            lambda: any("participant invité" in m.header("Subject") for m in sink.to(sophie)),
            what="the invitation told to Sophie",
        )

        # Nothing was sent twice. (The bot records a delivery after the relay's 250: the
        # sink may hold the last mail a moment before its row says delivered.)
        async def all_delivered() -> bool:
            async with runner.store.transaction() as tx:
                return all(s.delivered_at is not None for s in await tx.email_states())

        await matrix.wait_for(all_delivered, 30, "every email recorded as delivered")
        async with runner.store.transaction() as tx:
            states = await tx.email_states()
        assert len(sink.messages) == len(states)
        await runner.check_alive()


async def test_relay_down_refusing_and_back_every_email_delivered_once(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    async with (
        relay() as sink,
        email_bot(synapse, tmp_path / "bot", sink, retry_max_seconds=2) as runner,
    ):
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        await matrix.join_and_read(world.aidant, room_id, 1)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")

        async def states() -> list[Any]:
            async with runner.store.transaction() as tx:
                return list(await tx.email_states())

        async def all_tried_and_pending(count: int) -> bool:
            rows = await states()
            pending = [s for s in rows if s.delivered_at is None and s.failed_at is None]
            return len(pending) == count and all(s.attempts >= 1 for s in pending)

        # The relay goes down; three messages wait, across a restart of the bot.
        await sink.stop()
        for i in range(3):
            await say(world.aidant, room_id, f"Message {i} pendant la panne du relais.")
        await matrix.wait_for(lambda: all_tried_and_pending(3), 30, "three tries refused")
        await runner.restart()
        await matrix.wait_for(lambda: all_tried_and_pending(3), 30, "still queued")
        await sink.start()
        await sink.wait_for(lambda: len(sink.to(sophie)) == 4, what="the three messages")

        # Temporary refusal (4xx): retried until accepted.
        sink.answer = "451 4.3.0 Try again later"
        await say(world.aidant, room_id, "Message pendant le refus temporaire.")

        async def retried() -> bool:
            rows = await states()
            return any(s.attempts >= 2 and "451" in (s.last_error or "") for s in rows)

        await matrix.wait_for(retried, 30, "a 451 retried")
        sink.answer = None
        await sink.wait_for(lambda: len(sink.to(sophie)) == 5, what="the message after a 451")

        # Permanent refusal (5xx): not retried, the room is told, it is audited.
        sink.refuse[sophie] = "550 5.1.1 User unknown"
        n = count_from(world.aidant, room_id, world.bot_id)
        await say(world.aidant, room_id, "Message vers une boîte supprimée.")
        notice = await reply_with(world.aidant, room_id, world.bot_id, "pas pu être remis", after=n)
        assert sophie in notice and "Sophie Test" in notice
        del sink.refuse[sophie]
        async with runner.store.transaction() as tx:
            audit = await tx.audit_entries(reference=reference, action="email_delivery_failed")
            assert len(audit) == 1 and await tx.recipient_failures(sophie) == 1

        # Every email delivered exactly once, each with its own stable Message-ID.
        rows = await states()
        delivered = [s for s in rows if s.delivered_at is not None]
        assert len(delivered) == 5 and len([s for s in rows if s.failed_at]) == 1
        ids = [m.header("Message-ID") for m in sink.to(sophie)]
        assert len(ids) == len(set(ids)) == 5
        assert sorted(ids) == sorted(s.message_id for s in delivered)

        # Lifetime: an email the relay never takes fails after the configured delay.
        assert runner.email is not None
        runner.email["delivery_lifetime_seconds"] = 2
        await runner.restart()
        await sink.stop()
        n = count_from(world.aidant, room_id, world.bot_id)
        await say(world.aidant, room_id, "Message qui ne partira jamais.")
        expired = await reply_with(world.aidant, room_id, world.bot_id, "délai", after=n)
        assert "pas pu être remis" in expired
        await runner.check_alive()


async def test_replies_accepted_while_the_homeserver_is_down_are_posted_once_after(
    tmp_path: Path,
) -> None:
    # A homeserver of its own: the session's one must keep serving the other tests.
    homeserver = LocalSynapse(tmp_path / "synapse", fast_hashing=True)
    await homeserver.start()
    pool = matrix.Clients(homeserver, tmp_path / "nio")
    try:
        async with relay() as sink, email_bot(homeserver, tmp_path / "bot", sink) as runner:
            await runner.start()
            world = await make_world(pool, runner)
            sophie = mailonly(world)
            _, reference = await open_demande(world)
            room_id = (await demande_of(world, reference)).room_id
            await matrix.join_and_read(world.instr1, room_id, 1)
            await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")
            [dossier] = sink.to(sophie)

            await homeserver.stop()
            for i in range(3):
                code, _ = await reply(runner, dossier, sophie, f"Réponse {i} pendant la panne.")
                assert code == 250
                # 250 means: committed. The row is there before anything reached Matrix.
                entries = await _inbox(runner)
                assert len(entries) == i + 1 and entries[-1].state in ("pending", "posted")
            # Handed to the Matrix outbox maybe, but no event exists yet.
            assert all(e.event_id is None for e in await _inbox(runner))

            await homeserver.start()
            n = count_from(world.instr1, room_id, world.bot_id)
            for i in range(3):
                await reply_with(
                    world.instr1, room_id, world.bot_id, f"Réponse {i}", after=n, wait=90
                )
            await matrix.wait_for(
                lambda: _all_posted(runner), 60, "every inbox row posted with its event"
            )
            admin = await pool.user("admin", admin=True)
            events = await _timeline(homeserver, admin.access_token, room_id)
            bot_events = [e for e in events if e.get("sender") == world.bot_id]
            posted_ids = {e.event_id for e in await _inbox(runner)}
            assert posted_ids <= {e["event_id"] for e in bot_events}
            assert len(bridged(world.instr1, room_id, world.bot_id)) == 3
            await runner.check_alive()
    finally:
        await pool.aclose()
        await homeserver.stop()


async def _all_posted(runner: botsupport.BotRunner) -> bool:
    entries = await _inbox(runner)
    return bool(entries) and all(e.state == "posted" and e.event_id for e in entries)


async def _timeline(homeserver: LocalSynapse, token: str, room_id: str) -> list[dict[str, Any]]:
    from tests.support.process import AdminApi

    return await AdminApi(homeserver.base_url, token).timeline(room_id)


async def test_dangerous_files_and_edits_by_someone_else_never_reach_the_email_agents(
    synapse: LocalSynapse, clients: matrix.Clients, tmp_path: Path
) -> None:
    """Security review L9 and L11: a program posted in Matrix was attached to the emails
    (the inbound side refuses the same list), and an edit or withdrawal of someone else's
    message was bridged as if its author had made it."""
    import nio

    async with relay() as sink, email_bot(synapse, tmp_path / "bot", sink) as runner:
        await runner.start()
        world = await make_world(clients, runner)
        sophie = mailonly(world)
        _, reference = await open_demande(world)
        room_id = (await demande_of(world, reference)).room_id
        for client in (world.instr1, world.instr2):
            await matrix.join_and_read(client, room_id, 1)
        await sink.wait_for(lambda: sink.to(sophie), what="the dossier email")

        # A program, even with an innocent type: named, not attached.
        await _send_file(world.instr1, room_id, "facture.pdf.exe", b"MZ\x90\x00" + b"\x00" * 60)
        await sink.wait_for(lambda: len(sink.to(sophie)) >= 2, what="the file's email")
        note = sink.to(sophie)[1]
        assert list(note.message.iter_attachments()) == []  # type: ignore[attr-defined]
        assert "facture.pdf.exe" in note.text and "non jointe" in note.text

        # instr2 "corrects" then withdraws instr1's message: neither is bridged.
        original = await say(world.instr1, room_id, "Le dossier est complet.")
        await sink.wait_for(lambda: len(sink.to(sophie)) >= 3, what="the message")
        edit = {
            "msgtype": "m.text",
            "body": "* Le dossier est incomplet.",
            "m.new_content": {"msgtype": "m.text", "body": "Le dossier est incomplet."},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        }
        resp = await world.instr2.room_send(
            room_id, "m.room.message", edit, ignore_unverified_devices=True
        )
        assert isinstance(resp, nio.RoomSendResponse), resp
        # A later message proves the edit was handled (and not bridged) before it.
        await say(world.instr1, room_id, "Je reviens vers vous demain.")
        await sink.wait_for(lambda: len(sink.to(sophie)) >= 4, what="the next message")
        assert "demain" in sink.to(sophie)[3].text
        assert not any("incomplet" in m.text for m in sink.to(sophie))
        await runner.check_alive()
