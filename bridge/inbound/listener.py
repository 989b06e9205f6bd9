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

Then the mail is read cheaply first (`bridge.inbound.outline`: the header block,
and a count of parts and lines, no MIME tree), and the screening rules decide
from that alone whenever they can (`bridge.inbound.screening`):

* Auto-replies and list mail: accepted, kept, never posted. Loops: accepted and
  dropped, with an error in the log.
* A human reply must come from the agent the token is bound to, and be
  authenticated (trusted ``Authentication-Results``, or our own DKIM check
  when configured): else ``550 5.7.1``, audited, nothing kept.
* A bounce is believed (the recipient marked failing, the room told) only when
  authenticated and sent by the agent's mail system or ours; else it is kept,
  audited, and has no effect.
* More parts or header lines than a reply needs: ``554 5.6.0``, never parsed.

Only then is the mail parsed, in the listener's own parser thread (one at a
time, under a time limit), and committed. ``250`` only once the mail is
committed; anything going wrong before that (database unavailable, parse over
its time limit included) is ``451 4.3.0``, so the sender retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import dkim

import bridge.inbound.stored as stored
from bot.domain.lease import always_held
from bot.faults import crash_point
from bot.services.clock import Clock
from bot.services.waits import within
from bot.settings import EmailSettings
from bot.store.db import Store
from bot.store.email_tx import ReplyBinding
from bot.store.repository import Tx
from bridge.addressing import extract_token, parse_single_mailbox, token_digest
from bridge.delivery import record_failure
from bridge.inbound.authres import dkim_aligned
from bridge.inbound.mail import InboundMail, Kind
from bridge.inbound.outline import Outline, outline
from bridge.inbound.parse import parse_inbound
from bridge.inbound.screening import (
    AFTER_AUTHENTICATION,
    BEFORE_AUTHENTICATION,
    Context,
    Screening,
    Step,
    from_domain,
    screen,
)
from bridge.smtp_codes import SmtpReply

log = logging.getLogger(__name__)

DUPLICATE_WINDOW = timedelta(days=7)
# Far above what a bounded mail costs (a 15 MiB reply: under a second; 500 parts: half
# a second); a parse still running then is not waited for: 451, the sender retries.
PARSE_TIMEOUT_S = 30.0
_R = TypeVar("_R")
_DKIM_HEADER_RE = re.compile(rb"^dkim-signature\s*:", re.IGNORECASE | re.MULTILINE)

DnsFunc = Callable[..., Any]


def raw_hash(raw: bytes) -> str:
    """The content hash of a mail kept without being parsed."""
    return hashlib.sha256(b"aplus-inbound-raw-v1\x00" + raw).hexdigest()


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
        parse_timeout: float = PARSE_TIMEOUT_S,
        held: Callable[[], bool] = always_held,
    ) -> None:
        self.store = store
        # Two processes, one active (bot.services.lease): a 250 only from the active one.
        self._held = held
        self.settings = settings
        self.clock = clock
        self.on_committed = on_committed
        self.wake_matrix = wake_matrix
        self.dkim_dns = dkim_dns
        self.parse_timeout = parse_timeout
        # One mail parsed at a time, beside the loop's thread: a parse never runs on the
        # loop, and several mails never compete with the loop for the GIL at once.
        self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbound-parse")

    def close(self) -> None:
        self._parser.shutdown(wait=False, cancel_futures=True)

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
        if not self._held():
            log.warning("inbound: not the active bot; answered 451")
            return str(SmtpReply.TRY_AGAIN_LATER)
        try:
            reply = await self._data(envelope)
        except TimeoutError:
            log.warning("inbound: parse over %.0f s; answered 451", self.parse_timeout)
            return str(SmtpReply.TRY_AGAIN_LATER)
        except Exception:
            log.exception("inbound: message not committed; answered 451")
            return str(SmtpReply.TRY_AGAIN_LATER)
        if reply is SmtpReply.OK:
            self.on_committed()
            if not self._held():
                # Committed under our epoch, but the lease may be another's by now: the
                # sender's retry reaches the active bot, which takes the same
                # Message-ID once (a duplicate is accepted and not posted again).
                log.warning("inbound: lease not held at the 250; answered 451")
                return str(SmtpReply.TRY_AGAIN_LATER)
        return str(reply)

    async def _in_parser(self, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        """`fn` in the listener's parser thread, bounded in time (`TimeoutError`: 451)."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        return await within(loop.run_in_executor(self._parser, call), self.parse_timeout)

    async def _authenticated(self, raw: bytes, view: Outline) -> bool:
        if view.auth.authenticated:
            return True
        domain = from_domain(view)
        if not self.settings.dkim_verify or domain is None:
            return False
        return await self._in_parser(dkim_aligned_pass, raw, domain, self.dkim_dns)

    async def _data(self, envelope: Any) -> SmtpReply:
        s = self.settings
        raw = bytes(envelope.original_content or b"")
        _, digest = self._digest(envelope.rcpt_tos[0])
        view = await self._in_parser(
            outline,
            raw,
            mail_from=envelope.mail_from,
            trusted_authserv_ids=s.trusted_authserv_ids,
        )
        async with self.store.transaction() as tx:
            binding = await tx.reply_token_binding(digest)
        if binding is None:  # revoked between RCPT and DATA
            return SmtpReply.UNKNOWN_RECIPIENT
        ctx = Context(binding.agent_email, (s.from_domain, s.reply_domain))
        verdict = screen(BEFORE_AUTHENTICATION, view, ctx)
        if verdict is None:
            ctx = dataclasses.replace(ctx, authenticated=await self._authenticated(raw, view))
            verdict = screen(AFTER_AUTHENTICATION, view, ctx)
        mail: InboundMail | None = None
        if verdict is None:
            mail = await self._in_parser(
                parse_inbound,
                raw,
                max_attachment_bytes=s.max_inbound_attachment_bytes,
                allowed_types=s.allowed_attachment_types,
                mail_from=envelope.mail_from,
                trusted_authserv_ids=s.trusted_authserv_ids,
            )
        reply, told = await self._commit(raw, digest, view, verdict, mail)
        if reply is SmtpReply.OK:
            crash_point("inbox_committed")
        if told:
            self.wake_matrix()
        return reply

    async def _commit(
        self,
        raw: bytes,
        digest: str,
        view: Outline,
        verdict: Screening | None,
        mail: InboundMail | None,
    ) -> tuple[SmtpReply, bool]:
        """Keep (or refuse) the mail as screened or parsed; (the answer, room told?)."""
        now = self.clock.now()
        parsed_from = parse_single_mailbox(view.from_header) if view.from_header else None
        told = False
        async with self.store.transaction() as tx:
            binding = await tx.reply_token_binding(digest)
            if binding is None:  # revoked meanwhile
                return SmtpReply.UNKNOWN_RECIPIENT, False

            async def keep(state: str, kind: Kind, parsed: bytes | None = None) -> bool:
                return bool(
                    await tx.add_inbound(
                        key=uuid.uuid4().hex,
                        token_digest=digest,
                        demande_id=binding.demande_id,
                        agent_email=binding.agent_email,
                        sender=parsed_from[1] if parsed_from else None,
                        message_id=mail.message_id if mail else view.message_id,
                        content_hash=mail.content_hash if mail else raw_hash(raw),
                        kind=kind.value,
                        state=state,
                        raw=raw,
                        now=now,
                        parsed=parsed,
                    )
                )

            if verdict is not None:
                step = verdict.step
                if step is Step.REFUSE_CONTENT:
                    await self._audit(tx, "email_refused", binding, verdict.why)
                    return SmtpReply.TOO_COMPLEX, False
                if step is Step.REFUSE_SENDER:
                    await self._audit(tx, "email_refused", binding, verdict.why)
                    return SmtpReply.SENDER_NOT_AUTHORISED, False
                if step is Step.FILE_LOOP:
                    log.error(
                        "inbound: mail loop dropped for demande %s (%s)",
                        binding.reference,
                        verdict.why,
                    )
                    await self._audit(tx, "email_loop_dropped", binding, verdict.why)
                    await keep("loop", Kind.LOOP)
                elif step is Step.FILE_AUTOMATED:
                    await self._audit(tx, "email_auto_ignored", binding, verdict.why)
                    await keep("ignored", view.kind)
                else:  # FILE_BOUNCE_UNVERIFIED
                    await self._audit(tx, "email_bounce_unverified", binding, verdict.why)
                    await keep("bounce", Kind.BOUNCE)
                return SmtpReply.OK, False

            assert mail is not None
            if mail.kind is Kind.LOOP:
                await self._audit(tx, "email_loop_dropped", binding, mail.kind_reason)
                await keep("loop", Kind.LOOP)
            elif mail.kind is Kind.BOUNCE:
                # Authenticated, from the agent's mail system or ours (screened above).
                if await keep("bounce", Kind.BOUNCE):
                    told = await self._bounce(tx, binding, mail)
            elif mail.kind is not Kind.HUMAN:
                await self._audit(tx, "email_auto_ignored", binding, mail.kind_reason)
                await keep("ignored", mail.kind)
            elif await tx.inbound_seen(
                token_digest=digest,
                message_id=mail.message_id,
                content_hash=mail.content_hash,
                since=now - DUPLICATE_WINDOW,
            ):
                log.info("inbound: duplicate reply for demande %s accepted", binding.reference)
            else:
                empty = not (
                    mail.text
                    or mail.command
                    or mail.command_line
                    or mail.attachments
                    or mail.refused_attachments
                )
                # What was parsed here is what will be posted: no second parse.
                await keep("empty" if empty else "pending", Kind.HUMAN, stored.encode(mail))
        return SmtpReply.OK, told

    async def _bounce(self, tx: Tx, binding: ReplyBinding, mail: InboundMail) -> bool:
        """A believed bounce of one of our emails to this token's agent: it is failing."""
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
