"""The mail gateway of deploy/ (Postfix + rspamd), run natively, in front of the REAL bot.

Set-up, once for the module: the Debian packages (installed if missing), a dnsmasq
serving the test domains' DKIM and DMARC records, rspamd and Postfix started from the
SHIPPED templates rendered with test values (`deploy.render`), a sink playing the rest of
the Internet. Then one bot (the real App, email bridge on, LMTP listener) with a world
and two demandes. The rendered transport lists two listeners, the active bot's
(config.toml's port, where nothing listens: that bot is down) then the standby's, where
the test's bot listens: every reply below reaches the bot through the next-hop list.

Mail from "the Internet" is injected with swaks from 127.0.0.2, an address outside the
gateway's mynetworks (127.0.0.1/32). rspamd checks loopback mail too (check_local, as
shipped), so the checks run as they would for a public address.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import dkim
import pytest
import pytest_asyncio

from bot.devserver import LocalSynapse
from bot.domain.model import Role
from deploy import render as deploy_render
from tests.support import bot as botsupport
from tests.support import databases, deploy, matrix
from tests.support.email import bridged
from tests.support.mta import Delivered, DkimKey, Dns, Postfix, Rspamd, Sink, as_bytes, swaks
from tests.support.proconnect import ScratchCA
from tests.support.smtp import Received, build_reply, reply_to
from tests.support.world import World, demande_of, make_world, open_demande

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # One worker (make test: --dist loadgroup): one gateway for the module.
    pytest.mark.xdist_group("mta"),
    # The first test may install Debian packages and compile rspamd's expressions.
    pytest.mark.timeout(900),
]

# The bot is the module's (`scene`): each backend's tests share one (tests/conftest.py).
DB_BACKEND_SCOPE = "module"
AUTHSERV_ID = "mx.aplus.test"
REPLY_DOMAIN = "reponse.aplus.test"
PACKAGES = ("postfix", "postfix-pcre", "rspamd", "dnsmasq-base", "swaks")
MAX_MESSAGE_BYTES = 1024 * 1024  # small, so that the size test sends little
TIMINGS: dict[str, float] = {}  # start-up seconds per daemon (printed with -s)


@dataclass
class Gateway:
    base: Path
    rendered: Path
    dns: Dns
    rspamd: Rspamd
    postfix: Postfix
    sink: Sink
    mx_port: int
    submission_port: int
    primary_port: int  # the active bot's listener: down
    standby_port: int  # the test's bot listens here
    keys: dict[str, DkimKey]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    deploy.ensure_debian_packages(*PACKAGES)
    base = deploy.shared_dir("aplus-mta-")
    ports = {
        name: deploy.free_port()
        for name in (
            "dns",
            "mx",
            "submission",
            "milter",
            "normal",
            "controller",
            "primary",
            "standby",
            "sink",
        )
    }
    keys = {
        "caf": DkimKey.generate("caf95.example.test"),
        "sans": DkimKey.generate("sans-dmarc.example.test"),
        "bot": DkimKey.generate("aplus.test", "aplus2026"),
    }
    txt = {key.record_name: key.record for key in keys.values()}
    txt["_dmarc.caf95.example.test"] = "v=DMARC1; p=reject; adkim=r; aspf=r"
    txt["_dmarc.aplus.test"] = "v=DMARC1; p=reject"
    dns = Dns(base / "dns", ports["dns"], txt)
    (base / "dns").mkdir()
    ca = ScratchCA(base / "tls")
    for name in ("server.pem", "server.key"):
        shutil.chown(base / "tls" / name, "postfix")
    bot = deploy.bot_doc(
        email={
            "listen_port": ports["primary"],
            "relay_port": ports["submission"],
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "trusted_authserv_ids": [AUTHSERV_ID],
        }
    )
    values = deploy.values_doc(
        base,
        mail={
            "mx_listen": f"127.0.0.1:{ports['mx']}",
            "submission_listen": f"127.0.0.1:{ports['submission']}",
            "bot_listeners": [f"127.0.0.1:{ports['primary']}", f"127.0.0.1:{ports['standby']}"],
            "relayhost": f"[127.0.0.1]:{ports['sink']}",
            "tls_cert_file": str(ca.cert_file),
            "tls_key_file": str(ca.key_file),
        },
        rspamd={
            "milter": f"127.0.0.1:{ports['milter']}",
            "normal_socket": f"127.0.0.1:{ports['normal']}",
            "controller_socket": f"127.0.0.1:{ports['controller']}",
            "nameserver": f"127.0.0.1:{ports['dns']}",
        },
    )
    rendered = base
    deploy.render(rendered, bot, values)
    rspamd = Rspamd(rendered / "rspamd", base / "rspamd-run", ports["milter"])
    postfix = Postfix(
        config_dir=rendered / "postfix",
        queue_dir=base / "postfix-queue",
        data_dir=base / "postfix-data",
        maillog=base / "postfix-log" / "maillog",
        mx_port=ports["mx"],
    )
    sink = Sink(ports["sink"])
    started: list[Any] = []
    try:
        for daemon in (dns, rspamd, postfix, sink):
            started.append(daemon)  # stopped below even if its start fails
            begun = time.perf_counter()
            daemon.start()
            TIMINGS[type(daemon).__name__] = time.perf_counter() - begun
        yield Gateway(
            base,
            rendered,
            dns,
            rspamd,
            postfix,
            sink,
            ports["mx"],
            ports["submission"],
            ports["primary"],
            ports["standby"],
            keys,
        )
    finally:
        for daemon in reversed(started):
            daemon.stop()
        print("mail gateway start-up (s):", {k: round(v, 1) for k, v in TIMINGS.items()})
        if not os.environ.get("APLUS_KEEP_MTA"):  # keep the logs to debug a failure
            shutil.rmtree(base, ignore_errors=True)


@dataclass
class Scene:
    runner: botsupport.BotRunner
    world: World
    sans_dmarc: str  # the second email-only agent, on a domain without DMARC
    references: list[str]
    rooms: list[str]

    @property
    def sophie(self) -> str:
        email = self.world.directory.agents["mailonly"].email
        assert email is not None
        return email


async def until(predicate: Callable[[], Any], what: str, wait: float = 60) -> Any:
    """Poll without blocking the loop (the bot runs on it)."""
    deadline = time.monotonic() + wait
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {wait} s for {what}")
        await asyncio.sleep(0.1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scene(
    gateway: Gateway,
    synapse: LocalSynapse,
    tmp_path_factory: pytest.TempPathFactory,
    db_backend: str,
) -> AsyncIterator[Scene]:
    base = tmp_path_factory.mktemp("mta-bot")
    database = databases.create_database(for_session=True) if db_backend == "postgres" else None
    runner = await botsupport.new_bot(synapse, base / "bot", database_url=database)
    runner.secrets["APLUS_DKIM_PRIVATE_KEY"] = gateway.keys["bot"].private_pem.decode()
    runner.email = {
        "reply_domain": REPLY_DOMAIN,
        "relay_host": "127.0.0.1",
        "relay_port": gateway.submission_port,
        "relay_security": "none",
        "listen_host": "127.0.0.1",
        "listen_port": gateway.standby_port,  # the standby's port (see the module docstring)
        "listen_protocol": "lmtp",
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "trusted_authserv_ids": [AUTHSERV_ID],
        "dkim_domain": "aplus.test",
        "dkim_selector": "aplus2026",
    }
    clients = matrix.Clients(synapse, base / "nio")
    try:
        await runner.start()
        world = await make_world(clients, runner)
        sans = f"{matrix.unique('paul')}@sans-dmarc.example.test"
        await botsupport.add_agent(
            runner.store,
            world.directory,
            "sansdmarc",
            matrix_id=None,
            email=sans,
            roles=[Role.INSTRUCTEUR],
            group="caf",
            first_name="Paul",
        )
        references, rooms = [], []
        for _ in range(2):
            _, reference = await open_demande(world)
            room_id = (await demande_of(world, reference)).room_id
            await matrix.join_and_read(world.instr1, room_id, 1)
            references.append(reference)
            rooms.append(room_id)
        yield Scene(runner, world, sans, references, rooms)
    finally:
        await runner.stop()
        await clients.aclose()


def emails_to(gateway: Gateway, address: str, reference: str) -> list[Delivered]:
    return [m for m in gateway.sink.to(address) if reference in str(m.message["Subject"])]


async def dossier_email(gateway: Gateway, address: str, reference: str) -> Received:
    mails = await until(lambda: emails_to(gateway, address, reference), f"dossier to {address}")
    mail = mails[0]  # the dossier comes first; later ones are messages of the room
    return Received(mail.mail_from, mail.rcpt_tos, mail.data, time.perf_counter())


def signed_reply(key: DkimKey, original: Received, sender: str, text: str, **kw: Any) -> bytes:
    message = build_reply(original, sender=sender, text=text, authenticated=False, **kw)
    message["Date"] = format_datetime(datetime.now().astimezone())
    return key.sign(as_bytes(message))


async def inbound(scene: Scene, reference: str) -> list[Any]:
    demande = await demande_of(scene.world, reference)
    async with scene.runner.store.transaction() as tx:
        return list(await tx.inbound_entries(demande_id=demande.id))


# --------------------------------------------------------------------------- cases


async def test_outgoing_mail_leaves_through_postfix_with_a_verifiable_dkim_signature(
    gateway: Gateway, scene: Scene
) -> None:
    dossier = await dossier_email(gateway, scene.sophie, scene.references[0])
    # It went bot → Postfix (submission listener) → the Internet (the sink).
    assert f"by {AUTHSERV_ID}" in dossier.data.decode(errors="replace").split("\r\n\r\n")[0] or (
        "by mx.aplus.test" in str(dossier.message.get_all("Received"))
    )
    assert dossier.mail_from == reply_to(dossier)  # bounces come back to her reply address
    assert b"DKIM-Signature:" in dossier.data and b"d=aplus.test" in dossier.data
    # The signature still verifies after Postfix, against the DNS record.
    assert dkim.verify(dossier.data, dnsfunc=gateway.dns.dkim_dns)
    tampered = dossier.data.replace(b"Dupontel", b"Dupond", 1)
    assert not dkim.verify(tampered, dnsfunc=gateway.dns.dkim_dns)


async def test_an_aligned_dkim_signed_reply_is_posted_in_the_room(
    gateway: Gateway, scene: Scene
) -> None:
    reference, room = scene.references[0], scene.rooms[0]
    dossier = await dossier_email(gateway, scene.sophie, reference)
    mark = gateway.postfix.mark()
    before = len(bridged(scene.world.instr1, room, scene.world.bot_id))
    raw = signed_reply(
        gateway.keys["caf"],
        dossier,
        scene.sophie,
        "Bonjour, le dossier est complet, je le transmets.",
    )
    result = await swaks(
        gateway.mx_port,
        raw,
        mail_from=scene.sophie,
        to=[reply_to(dossier)],
        work=gateway.base / "swaks",
    )
    assert result.code == 250, result.transcript + gateway.postfix.log()[-4000:]
    # Handed to the bot by LMTP, through the standby next hop (the active one is down).
    [line] = await asyncio.to_thread(
        gateway.postfix.wait_log, r"aplus-remise/lmtp.*status=(sent|bounced|deferred)", mark
    )
    async with scene.runner.store.transaction() as tx:
        audits = await tx.audit_entries(reference=reference, action="email_refused")
    assert "status=sent" in line, (line, [a.details for a in audits])
    assert f":{gateway.standby_port}," in line
    await matrix.sync_until(
        scene.world.instr1,
        lambda: len(bridged(scene.world.instr1, room, scene.world.bot_id)) > before,
        60,
        "the reply posted in the room",
    )
    posted = bridged(scene.world.instr1, room, scene.world.bot_id)[-1]
    assert "le dossier est complet" in posted.body
    # What the bot trusted: rspamd's header under the gateway's name, on top.
    entry = [e for e in await inbound(scene, reference) if e.state != "empty"][-1]
    async with scene.runner.store.transaction() as tx:
        stored = await tx.inbound_raw(entry.key)
    first_ar = next(
        ln
        for ln in stored.decode(errors="replace").splitlines()
        if ln.lower().startswith("authentication-results:")
    )
    assert first_ar.split(":", 1)[1].strip().startswith(AUTHSERV_ID + ";")
    assert "dkim=pass" in stored.decode() and "dmarc=pass" in stored.decode()


async def test_a_forged_authentication_results_is_stripped_then_refused_by_the_bot(
    gateway: Gateway, scene: Scene
) -> None:
    reference = scene.references[0]
    dossier = await dossier_email(gateway, scene.sans_dmarc, reference)
    mark = gateway.postfix.mark()
    domain = scene.sans_dmarc.rpartition("@")[2]
    message = build_reply(
        dossier,
        sender=scene.sans_dmarc,
        text="Réponse falsifiée",
        authenticated=True,
        authserv_id=AUTHSERV_ID,
    )
    assert message["Authentication-Results"].startswith(f"{AUTHSERV_ID}; dkim=pass")
    before = len(await inbound(scene, reference))
    # Unsigned, from a domain without DMARC: rspamd has nothing to reject at SMTP time.
    result = await swaks(
        gateway.mx_port,
        as_bytes(message),
        mail_from=scene.sans_dmarc,
        to=[reply_to(dossier)],
        work=gateway.base / "swaks",
    )
    assert result.code == 250, result.transcript + gateway.postfix.log()[-4000:]
    # The bot refuses it (5.7.1, not authenticated) and Postfix bounces it to the sender.
    [line] = await asyncio.to_thread(
        gateway.postfix.wait_log, r"aplus-remise/lmtp.*status=bounced", mark
    )
    assert "5.7.1" in line
    bounces = await until(
        lambda: [m for m in gateway.sink.to(scene.sans_dmarc) if m.mail_from in ("", "<>")],
        "the bounce to the forger's address",
    )
    returned = bounces[-1].data.decode(errors="replace")
    # The header the bot saw (returned in the bounce): the forged one is gone, rspamd's is
    # there and does not say pass.
    ar_lines = [
        ln for ln in returned.splitlines() if ln.lower().startswith("authentication-results:")
    ]
    assert ar_lines, returned
    assert not [ln for ln in ar_lines if "dkim=pass header.d=" + domain in ln]
    assert all("dmarc=pass" not in ln for ln in ar_lines)
    assert len(await inbound(scene, reference)) == before  # nothing kept, nothing posted
    async with scene.runner.store.transaction() as tx:
        audits = await tx.audit_entries(reference=reference, action="email_refused")
    assert any("unauthenticated" in str(a.details) for a in audits), audits


async def test_a_dmarc_reject_failure_is_refused_at_smtp_time(
    gateway: Gateway, scene: Scene
) -> None:
    reference = scene.references[1]
    dossier = await dossier_email(gateway, scene.sophie, reference)
    mark = gateway.postfix.mark()
    before = len(await inbound(scene, reference))
    bounces_before = len([m for m in gateway.sink.to(scene.sophie) if m.mail_from in ("", "<>")])
    # caf95 publishes p=reject: an unsigned mail in its name is refused during the session.
    message = build_reply(dossier, sender=scene.sophie, text="Sans signature", authenticated=False)
    result = await swaks(
        gateway.mx_port,
        as_bytes(message),
        mail_from=scene.sophie,
        to=[reply_to(dossier)],
        work=gateway.base / "swaks",
    )
    assert result.code // 100 == 5, result.transcript
    lines = await asyncio.to_thread(
        gateway.postfix.wait_log, r"milter-reject: END-OF-MESSAGE", mark
    )
    assert lines
    # And a signature that no longer matches the body is the same failure.
    signed = signed_reply(gateway.keys["caf"], dossier, scene.sophie, "Texte signé")
    result = await swaks(
        gateway.mx_port,
        signed.replace(b"Texte sign", b"Texte chang"),
        mail_from=scene.sophie,
        to=[reply_to(dossier)],
        work=gateway.base / "swaks",
    )
    assert result.code // 100 == 5, result.transcript
    # Nothing reached the bot, nobody got a bounce (no backscatter).
    assert len(await inbound(scene, reference)) == before
    delivered = re.compile(r"aplus-remise/lmtp.*status=(sent|bounced|deferred)")
    assert not delivered.search(gateway.postfix.log_since(mark))  # only the RCPT probe
    assert (
        len([m for m in gateway.sink.to(scene.sophie) if m.mail_from in ("", "<>")])
        == bounces_before
    )


async def test_one_mail_to_two_reply_addresses_is_delivered_once_to_each(
    gateway: Gateway, scene: Scene
) -> None:
    dossiers = [await dossier_email(gateway, scene.sophie, ref) for ref in scene.references]
    addresses = [reply_to(d) for d in dossiers]
    assert addresses[0] != addresses[1]
    mark = gateway.postfix.mark()
    counts = [len(await inbound(scene, ref)) for ref in scene.references]
    message = build_reply(
        dossiers[0],
        sender=scene.sophie,
        text="Même réponse aux deux",
        authenticated=False,
        to=", ".join(addresses),
    )
    message["Date"] = format_datetime(datetime.now().astimezone())
    raw = gateway.keys["caf"].sign(as_bytes(message))
    result = await swaks(
        gateway.mx_port, raw, mail_from=scene.sophie, to=addresses, work=gateway.base / "swaks"
    )
    assert result.code == 250, result.transcript + gateway.postfix.log()[-4000:]
    lines = await asyncio.to_thread(
        gateway.postfix.wait_log, r"aplus-remise/lmtp.*status=sent", mark, 60, 2
    )
    # Two deliveries of one recipient each, at once: no 452 deferral of the second.
    assert sorted(line.split("to=<", 1)[1].split(">", 1)[0] for line in lines) == sorted(addresses)
    assert "status=deferred" not in gateway.postfix.log_since(mark)
    # "status=sent" is the bot's 250, given once the reply is committed: one more each.
    for ref, count in zip(scene.references, counts, strict=True):
        assert len(await inbound(scene, ref)) == count + 1, ref
    for room in scene.rooms:
        await matrix.sync_until(
            scene.world.instr1,
            lambda room=room: any(
                "Même réponse aux deux" in e.body
                for e in bridged(scene.world.instr1, room, scene.world.bot_id)
            ),
            60,
            "the reply posted in each room",
        )
        posted = [
            e
            for e in bridged(scene.world.instr1, room, scene.world.bot_id)
            if "Même réponse aux deux" in e.body
        ]
        assert len(posted) == 1


async def test_an_unknown_reply_address_is_refused_during_the_session(
    gateway: Gateway, scene: Scene
) -> None:
    message = EmailMessage()
    message["From"] = scene.sophie
    message["To"] = "reply+" + "a" * 32 + "@" + REPLY_DOMAIN
    message["Subject"] = "sonde"
    message["Message-ID"] = make_msgid(domain="caf95.example.test")
    message.set_content("?")
    result = await swaks(
        gateway.mx_port,
        as_bytes(message),
        mail_from=scene.sophie,
        to=[str(message["To"])],
        work=gateway.base / "swaks",
    )
    # Postfix asked the bot (address verification through the same transport) and says
    # 550 at RCPT: no bounce to a possibly forged sender later.
    assert result.code == 550, result.transcript
    assert "RCPT" in result.transcript.split("<** 550")[0].splitlines()[-1]


async def test_the_gateway_is_not_an_open_relay_and_keeps_the_size_limit(
    gateway: Gateway, scene: Scene
) -> None:
    message = EmailMessage()
    message["From"] = scene.sophie
    message["To"] = "quelquun@ailleurs.example.test"
    message["Subject"] = "relais"
    message.set_content("?")
    result = await swaks(
        gateway.mx_port,
        as_bytes(message),
        mail_from=scene.sophie,
        to=["quelquun@ailleurs.example.test"],
        work=gateway.base / "swaks",
    )
    assert result.code // 100 in (4, 5) and "Relay access denied" in result.transcript
    # Postfix's limit sits just under the bot's max_message_bytes (deploy.render).
    limit = int(gateway.postfix.postconf("message_size_limit"))
    assert limit == MAX_MESSAGE_BYTES - deploy_render.POSTFIX_SIZE_MARGIN
    dossier = await dossier_email(gateway, scene.sophie, scene.references[0])
    big = build_reply(
        dossier,
        sender=scene.sophie,
        text="Pièce trop lourde",
        authenticated=False,
        attachments=[("scan.pdf", "application/pdf", b"%PDF" + b"x" * limit)],
    )
    result = await swaks(
        gateway.mx_port,
        gateway.keys["caf"].sign(as_bytes(big)),
        mail_from=scene.sophie,
        to=[reply_to(dossier)],
        work=gateway.base / "swaks",
    )
    assert result.code == 552, result.transcript
