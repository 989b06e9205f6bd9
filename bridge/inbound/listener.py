"""Email → Matrix, the SMTP/LMTP side: replies are checked and committed to the inbox.

The listener is created on the bot's own event loop (`start_listener`), not
with aiosmtpd's threaded ``Controller``. Posting to the room happens later,
from the inbox (`bridge.posting`).

What each reply gets:

* ``RCPT TO`` that is not a live reply token: ``550 5.1.1``. Malformed,
  unknown, revoked, or whose agent left the demande: same line, same work (one
  lookup of a digest), so probing teaches nothing. One recipient per
  transaction (the sending MTA sends the others in their own).
* Too big: ``552`` (aiosmtpd enforces ``max_message_bytes`` while reading).
* Auto-replies, bounces, list mail: accepted, kept, never posted; a bounce of
  one of our emails marks that recipient failing and tells the room. Loops:
  accepted and dropped, with an error in the log.
* A human reply must come from the agent the token is bound to, and be
  authenticated (trusted ``Authentication-Results``, or our own DKIM check
  when configured): else ``550 5.7.1``, audited, nothing kept.
* ``250`` only once the mail is committed; anything going wrong before that
  (database unavailable included) is ``451 4.3.0``, so the sender retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dkim
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from bot.faults import crash_point
from bot.services.clock import Clock
from bot.settings import EmailSettings
from bot.store.db import Store
from bot.store.email_tx import ReplyBinding
from bot.store.repository import Tx
from bridge.addressing import check_sender, extract_token, parse_single_mailbox, token_digest
from bridge.delivery import record_failure
from bridge.inbound.authres import dkim_aligned
from bridge.inbound.mail import InboundMail, Kind
from bridge.inbound.parse import parse_inbound
from bridge.smtp_codes import SmtpReply

log = logging.getLogger(__name__)

DUPLICATE_WINDOW = timedelta(days=7)
_DKIM_HEADER_RE = re.compile(rb"^dkim-signature\s*:", re.IGNORECASE | re.MULTILINE)

DnsFunc = Callable[..., Any]


def dkim_aligned_pass(raw: bytes, from_domain: str, dnsfunc: DnsFunc | None = None) -> bool:
    """A valid DKIM signature whose ``d=`` is aligned with the From domain (blocking: DNS)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    count = len(_DKIM_HEADER_RE.findall(head))
    for idx in range(min(count, 5)):
        checker = dkim.DKIM(raw)
        try:
            ok = checker.verify(idx=idx, dnsfunc=dnsfunc) if dnsfunc else checker.verify(idx=idx)
        except Exception as exc:  # dkimpy raises on malformed signatures and DNS errors
            log.info("inbound: DKIM signature %d not verified (%s)", idx, type(exc).__name__)
            continue
        domain = checker.domain.decode("ascii", "replace") if checker.domain else ""
        if ok and dkim_aligned(domain, from_domain):
            return True
    return False


class InboundHandler:
    """aiosmtpd handler: ``handle_RCPT`` and ``handle_DATA`` return SMTP reply lines."""

    def __init__(
        self,
        *,
        store: Store,
        settings: EmailSettings,
        clock: Clock,
        on_committed: Callable[[], None],
        wake_matrix: Callable[[], None],
        dkim_dns: DnsFunc | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.on_committed = on_committed
        self.wake_matrix = wake_matrix
        self.dkim_dns = dkim_dns

    # ------------------------------------------------------------------ RCPT

    def _digest(self, address: str) -> tuple[str | None, str]:
        token = extract_token(address, self.settings.reply_domain)
        # A malformed address is looked up too (as an impossible digest): same work.
        return token, token_digest(token if token else "\x00" + address[:320])

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if envelope.rcpt_tos:
            return str(SmtpReply.TOO_MANY_RECIPIENTS)
        token, digest = self._digest(address)
        try:
            async with self.store.transaction() as tx:
                binding = await tx.reply_token_binding(digest)
        except Exception:
            log.exception("inbound: recipient lookup failed")
            return str(SmtpReply.TRY_AGAIN_LATER)
        if token is None or binding is None:
            return str(SmtpReply.UNKNOWN_RECIPIENT)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(SmtpReply.RECIPIENT_OK)

    # ------------------------------------------------------------------ DATA

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        try:
            reply = await self._data(envelope)
        except Exception:
            log.exception("inbound: message not committed; answered 451")
            return str(SmtpReply.TRY_AGAIN_LATER)
        if reply is SmtpReply.OK:
            self.on_committed()
        return str(reply)

    async def _data(self, envelope: Any) -> SmtpReply:
        s = self.settings
        raw = bytes(envelope.original_content or b"")
        _, digest = self._digest(envelope.rcpt_tos[0])
        mail: InboundMail = await asyncio.to_thread(
            parse_inbound,
            raw,
            max_attachment_bytes=s.max_inbound_attachment_bytes,
            allowed_types=s.allowed_attachment_types,
            mail_from=envelope.mail_from,
            trusted_authserv_ids=s.trusted_authserv_ids,
        )
        authenticated = mail.auth.authenticated
        parsed_from = parse_single_mailbox(mail.from_header) if mail.from_header else None
        if (
            mail.kind is Kind.HUMAN
            and not authenticated
            and s.dkim_verify
            and parsed_from is not None
        ):
            domain = parsed_from[1].rpartition("@")[2]
            authenticated = await asyncio.to_thread(dkim_aligned_pass, raw, domain, self.dkim_dns)
        now = self.clock.now()
        told = False
        async with self.store.transaction() as tx:
            binding = await tx.reply_token_binding(digest)
            if binding is None:  # revoked between RCPT and DATA
                return SmtpReply.UNKNOWN_RECIPIENT

            async def keep(state: str) -> bool:
                return bool(
                    await tx.add_inbound(
                        key=uuid.uuid4().hex,
                        token_digest=digest,
                        demande_id=binding.demande_id,
                        agent_email=binding.agent_email,
                        sender=parsed_from[1] if parsed_from else None,
                        message_id=mail.message_id,
                        content_hash=mail.content_hash,
                        kind=mail.kind.value,
                        state=state,
                        raw=raw,
                        now=now,
                    )
                )

            if mail.kind is Kind.LOOP:
                log.error(
                    "inbound: mail loop dropped for demande %s (%s)",
                    binding.reference,
                    mail.kind_reason,
                )
                await self._audit(tx, "email_loop_dropped", binding, mail.kind_reason)
                await keep("loop")
                return SmtpReply.OK
            if mail.kind is Kind.BOUNCE:
                if await keep("bounce"):
                    told = await self._bounce(tx, binding, mail)
            elif mail.kind is not Kind.HUMAN:
                await self._audit(tx, "email_auto_ignored", binding, mail.kind_reason)
                await keep("ignored")
            elif not check_sender(binding.agent_email, mail.from_header or ""):
                await self._audit(tx, "email_refused", binding, "sender is not the token's agent")
                return SmtpReply.SENDER_NOT_AUTHORISED
            elif not authenticated:
                why = f"unauthenticated: {mail.auth.reason}"
                await self._audit(tx, "email_refused", binding, why)
                return SmtpReply.SENDER_NOT_AUTHORISED
            elif await tx.inbound_seen(
                token_digest=digest,
                message_id=mail.message_id,
                content_hash=mail.content_hash,
                since=now - DUPLICATE_WINDOW,
            ):
                log.info("inbound: duplicate reply for demande %s accepted", binding.reference)
            else:
                empty = not (
                    mail.text or mail.command or mail.attachments or mail.refused_attachments
                )
                await keep("empty" if empty else "pending")
        crash_point("inbox_committed")
        if told:
            self.wake_matrix()
        return SmtpReply.OK

    async def _bounce(self, tx: Tx, binding: ReplyBinding, mail: InboundMail) -> bool:
        """A bounce of one of our emails to this token's agent: the recipient is failing."""
        await self._audit(tx, "email_bounce_received", binding, mail.kind_reason)
        if mail.bounced_message_id is None:
            return False
        ours = [
            e
            for e in await tx.email_states(message_id=mail.bounced_message_id)
            if e.recipient == binding.agent_email and e.demande_id == binding.demande_id
        ]
        told = False
        for email in ours[:1]:
            told = await record_failure(
                tx,
                email_id=email.id,
                demande_id=email.demande_id,
                recipient=email.recipient,
                kind=email.kind,
                reason_fr="le courriel a été renvoyé en erreur par la messagerie du destinataire",
                error=f"bounce: {mail.kind_reason}"[:200],
                now=self.clock.now(),
            )
        return told

    async def _audit(self, tx: Tx, action: str, binding: ReplyBinding, why: str) -> None:
        await tx.audit(
            action,
            actor=binding.agent_email,
            reference=binding.reference,
            details={"why": why[:300]},
            now=self.clock.now(),
        )


async def start_listener(handler: InboundHandler, settings: EmailSettings) -> asyncio.Server:
    """The SMTP (or LMTP) server, on the running loop. ``listen_port = 0``: a free port."""
    loop = asyncio.get_running_loop()
    protocol = LMTP if settings.listen_protocol == "lmtp" else SMTP

    def factory() -> SMTP:
        return protocol(
            handler,
            data_size_limit=settings.max_message_bytes,
            enable_SMTPUTF8=False,
            hostname=settings.reply_domain,
            ident="Administration+",
            timeout=300,
            loop=loop,
        )

    server = await loop.create_server(factory, host=settings.listen_host, port=settings.listen_port)
    address = server.sockets[0].getsockname()
    log.info("email listener (%s) on %s:%s", settings.listen_protocol, address[0], address[1])
    return server


def listening_address(server: asyncio.Server) -> tuple[str, int]:
    host, port = server.sockets[0].getsockname()[:2]
    return str(host), int(port)
