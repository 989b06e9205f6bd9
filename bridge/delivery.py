"""Delivery of the email outbox to the relay (aiosmtplib), with backoff for days.

A row is delivered once the relay answered 250 to its DATA, and that is
committed right away. A bot killed between the relay's 250 and that commit sends
the row again on restart, with the same Message-ID: the only duplicate SMTP can
leave, and one mail clients collapse. Everything else is exactly once.

Outcomes of one attempt:

* 250: delivered.
* 5xx to MAIL, RCPT or DATA: permanent failure, told in the room and audited.
* 4xx, or the relay unreachable: retried later (exponential backoff, capped)
  until ``delivery_lifetime_seconds`` after the email was queued, then a
  permanent failure too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiosmtplib
import dkim

from bot.domain.lease import LeaseLost, always_held, require_held
from bot.matrix import content as mx
from bot.services import outbox as matrix_outbox
from bot.services.clock import Clock
from bot.services.failures import stop_if_requested
from bot.services.waits import woken_within
from bot.settings import EmailSettings
from bot.store.db import Store
from bot.store.email_tx import OutgoingEmail
from bot.store.repository import Tx

log = logging.getLogger(__name__)

_SIGNED_HEADERS = [
    b"from",
    b"to",
    b"reply-to",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
]


class _Retry(Exception):
    """The relay could not take this email now (4xx or unreachable)."""


class _Refused(Exception):
    """The relay refused this email for good (5xx)."""


class RelayConnection(Protocol):
    """One open connection to the relay (the SMTP seam; aiosmtplib's `SMTP` has this
    shape). Refusals are aiosmtplib's exceptions, as the relay's answers."""

    async def sendmail(self, sender: str, recipients: Sequence[str], message: bytes) -> Any: ...
    async def quit(self) -> Any: ...
    def close(self) -> None: ...


class Relay(Protocol):
    async def connect(self) -> RelayConnection: ...


class SmtpRelay:
    """The real relay, over aiosmtplib, as the settings describe it."""

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings

    async def connect(self) -> RelayConnection:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.relay_host,
            port=s.relay_port,
            timeout=s.relay_timeout_seconds,
            use_tls=s.relay_security == "tls",
            start_tls=s.relay_security == "starttls",
            username=s.relay_username,
            password=s.relay_password.reveal() if s.relay_password else None,
            local_hostname=s.from_domain,
        )
        await client.connect()
        return SmtpConnection(client)


class SmtpConnection:
    """An aiosmtplib client seen through `RelayConnection`."""

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self._client = client

    async def sendmail(self, sender: str, recipients: Sequence[str], message: bytes) -> Any:
        return await self._client.sendmail(sender, recipients, message)

    async def quit(self) -> Any:
        return await self._client.quit()

    def close(self) -> None:
        self._client.close()


def failure_notice(name: str, address: str, reason: str) -> str:
    who = f"{name} ({address})" if name else address
    return f"Le courriel à {who} n'a pas pu être remis : {reason}."


class EmailDelivery:
    def __init__(
        self,
        *,
        store: Store,
        settings: EmailSettings,
        clock: Clock,
        wake_matrix: Callable[[], None],
        batch: int = 200,
        held: Callable[[], bool] = always_held,
        relay: Relay | None = None,
    ) -> None:
        self.store = store
        # Two processes, one active (bot.services.lease): only the active one delivers.
        self._held = held
        self.settings = settings
        # The relay seam: aiosmtplib in production, a recording relay in service tests.
        self.relay: Relay = relay or SmtpRelay(settings)
        self.clock = clock
        self.wake_matrix = wake_matrix
        self.batch = batch
        self.relay_state = "unknown"  # "ok" | "unreachable" | "unknown": for /healthz
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ worker

    async def run(self, *, idle_seconds: float = 30.0) -> None:
        delay = 1.0
        while True:
            try:
                self._wake.clear()
                await self.flush()
                timeout = idle_seconds
                async with self.store.transaction() as tx:
                    due = await tx.next_email_due()
                if due is not None:
                    timeout = min(idle_seconds, max(0.05, (due - self.clock.now()).total_seconds()))
                await woken_within(self._wake.wait(), timeout)
                delay = 1.0
            except LeaseLost:
                log.warning("email delivery: not the active bot; retry in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
            except Exception as exc:
                stop_if_requested(exc)  # a failed cleanup after the stop: the stop goes on
                # Database unavailable or a bug: the rows stay queued.
                log.exception("email delivery: unexpected failure; retry in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def flush(self) -> int:
        """Try every email that is due, over one relay connection. Returns how many left."""
        async with self._lock:
            async with self.store.transaction() as tx:
                due = await tx.due_emails(self.clock.now(), self.batch)
            if not due:
                return 0
            client: RelayConnection | None = None
            done = 0
            try:
                for index, email in enumerate(due):
                    if self._expired(email):
                        await self._failed(email, "délai de remise dépassé", "lifetime exceeded")
                        done += 1
                        continue
                    try:
                        if client is None:
                            client = await self.relay.connect()
                        await self._send(client, email)
                    except _Refused as exc:
                        await self._failed(email, "adresse refusée par le serveur", str(exc))
                    except _Retry as exc:
                        await self._retry(email, str(exc))
                    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                        # The connection is gone: this one and the rest wait for the next round.
                        self.relay_state = "unreachable"
                        log.warning("email relay unavailable: %s", type(exc).__name__)
                        for later in due[index:]:
                            await self._retry(later, f"relay unavailable: {type(exc).__name__}")
                        if client is not None:
                            client.close()
                            client = None
                        break
                    else:
                        self.relay_state = "ok"
                        async with self.store.transaction() as tx:
                            await tx.email_delivered(email.id, self.clock.now())
                    done += 1
            finally:
                if client is not None:
                    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                        await client.quit()
            return done

    # ------------------------------------------------------------------ SMTP

    async def _send(self, client: RelayConnection, email: OutgoingEmail) -> None:
        # Raises out of `flush` untouched: the row stays as it is, for the active bot.
        require_held(self._held(), "SMTP delivery")
        try:
            await client.sendmail(email.envelope_from, [email.recipient], self.sign(email.message))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise _classify(min(codes) if codes else 451, "; ".join(map(str, codes))) from exc
        except (
            aiosmtplib.SMTPSenderRefused,
            aiosmtplib.SMTPRecipientRefused,
            aiosmtplib.SMTPDataError,
        ) as exc:
            raise _classify(exc.code, f"{exc.code} {exc.message[:200]}") from exc

    def sign(self, message: bytes) -> bytes:
        """DKIM-signed when configured (the key is read from the settings' secret)."""
        s = self.settings
        if not (s.dkim_domain and s.dkim_selector and s.dkim_private_key):
            return message
        signature: bytes = dkim.sign(
            message,
            s.dkim_selector.encode(),
            s.dkim_domain.encode(),
            s.dkim_private_key.reveal().encode(),
            include_headers=_SIGNED_HEADERS,
        )
        return signature + message

    # ------------------------------------------------------------------ outcomes

    def _expired(self, email: OutgoingEmail) -> bool:
        lifetime = timedelta(seconds=self.settings.delivery_lifetime_seconds)
        return self.clock.now() - email.created_at >= lifetime

    def _next_attempt(self, email: OutgoingEmail) -> datetime:
        s = self.settings
        delay = min(s.retry_initial_seconds * 2 ** min(email.attempts, 30), s.retry_max_seconds)
        delay *= random.uniform(0.9, 1.1)  # several bots, one relay: do not retry in step
        at = self.clock.now() + timedelta(seconds=delay)
        deadline = email.created_at + timedelta(seconds=s.delivery_lifetime_seconds)
        return min(at, deadline)

    async def _retry(self, email: OutgoingEmail, error: str) -> None:
        async with self.store.transaction() as tx:
            await tx.email_retry_later(email.id, error=error[:500], at=self._next_attempt(email))

    async def _failed(self, email: OutgoingEmail, reason_fr: str, error: str) -> None:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.email_failed(email.id, error=error[:500], now=now):
                return
            told = await record_failure(
                tx,
                email_id=email.id,
                demande_id=email.demande_id,
                recipient=email.recipient,
                kind=email.kind,
                reason_fr=reason_fr,
                error=error,
                now=now,
            )
        log.warning("email %d (demande %s) failed: %s", email.id, email.demande_id, error[:100])
        if told:
            self.wake_matrix()


async def record_failure(
    tx: Tx,
    *,
    email_id: int,
    demande_id: int | None,
    recipient: str,
    kind: str,
    reason_fr: str,
    error: str,
    now: datetime,
) -> bool:
    """Mark the recipient failing, audit, and tell the room (not for notices to Matrix
    users). True if a room notice was queued (the caller wakes the Matrix outbox)."""
    await tx.mark_recipient_failing(recipient, error[:200], now)
    demande = await tx.get_demande(demande_id) if demande_id is not None else None
    await tx.audit(
        "email_delivery_failed",
        actor="email",
        reference=demande.reference if demande else None,
        details={"email": email_id, "kind": kind, "error": error[:200]},
        now=now,
    )
    if demande is None or not demande.room_id or kind == "notification":
        return False
    agent = await tx.get_agent_by_email(recipient)
    text = failure_notice(agent.display_name if agent else "", recipient, reason_fr)
    await matrix_outbox.enqueue(
        tx,
        txn_id=f"email-failed-{email_id}",
        room_id=demande.room_id,
        content=mx.notice(text, email_failure=email_id),
        now=now,
    )
    return True


def _classify(code: int, text: str) -> Exception:
    return _Refused(text) if code >= 500 else _Retry(text)
