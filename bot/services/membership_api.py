"""The bot's side of the homeserver guard: may this person be invited, join, be in a new room?

Synapse's module (`synapse_module/`) asks `POST /aplus-guard/v1/check` for every
invite and join in a demande room and for every demande room creation, with the
shared secret as a bearer token. The answer comes from the committed ledger only,
through `LedgerReader` (its own read-only connection): it never waits for the bot's
own transaction or lock, and a standby process with the same database answers the
same. Refusals are audited after the answer is sent (`guard_refused`).

Listens on loopback or a private address only (checked by the settings).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.domain import guard as rules
from bot.services.clock import Clock
from bot.settings import Settings
from bot.store.db import Store
from bot.store.ledger_reader import LedgerReader

log = logging.getLogger(__name__)

CHECK_PATH = "/aplus-guard/v1/check"
MAX_REQUEST_BYTES = 64 * 1024

# Called after a refusal has been answered (the audit): never delays the answer.
# Arguments: the question, the answer, the demande's reference when the ledger knows it.
OnRefusal = Callable[[rules.Question, rules.Answer, str | None], Awaitable[None]]


class MembershipApi:
    def __init__(
        self,
        *,
        reader: LedgerReader,
        bot_user_id: str,
        shared_secret: str,
        host: str,
        port: int,
        on_refusal: OnRefusal | None = None,
    ) -> None:
        self.reader = reader
        self.bot_user_id = bot_user_id
        self._expected = f"Bearer {shared_secret}".encode()
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._on_refusal = on_refusal
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("membership API not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen (again, after `close`: tests stop and restart the endpoint)."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post(CHECK_PATH, self._check)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = self._port if self._port is not None else self._requested_port
        site = web.TCPSite(runner, self.host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else port
        self._runner = runner
        log.info("membership API listening on %s", self.base_url)

    async def stop(self) -> None:
        """Stop listening (`start` listens again on the same port)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for task in list(self._background):
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        await self.stop()
        await self.reader.close()

    async def _check(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            log.warning("membership API: request without the shared secret refused")
            return web.json_response({"error": "unauthorised"}, status=401)
        try:
            body: Any = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _refused(rules.Answer(False, "bad_question"))
        question = rules.parse_question(body)
        if isinstance(question, str):
            log.warning("membership API: malformed question (%s)", question)
            return _refused(rules.Answer(False, "bad_question"))
        try:
            ledger = await self.reader.view(room_id=question.room_id, reference=question.reference)
        except Exception:
            # The database cannot answer: no decision (the module asks the next URL, then
            # refuses: fail closed).
            log.exception("membership API: ledger unavailable")
            return web.json_response({"error": "ledger unavailable"}, status=503)
        answer = rules.answer(question, ledger, self.bot_user_id)
        if not answer.allow:
            log.info(
                "membership API: %s of %s refused (%s)",
                question.action,
                question.user or f"{len(question.invitees)} invitee(s)",
                answer.reason,
            )
            self._after(question, answer, ledger.reference if ledger else None)
        return web.json_response(answer.as_json())

    def _after(self, question: rules.Question, answer: rules.Answer, reference: str | None) -> None:
        if self._on_refusal is None:
            return
        report = self._report(question, answer, reference)
        task = asyncio.create_task(report, name="guard-audit")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report(
        self, question: rules.Question, answer: rules.Answer, reference: str | None
    ) -> None:
        assert self._on_refusal is not None
        try:
            await self._on_refusal(question, answer, reference)
        except Exception:
            log.exception("membership API: refusal not audited")


def _refused(answer: rules.Answer) -> web.Response:
    return web.json_response(answer.as_json())


async def start_membership_api(
    settings: Settings, store: Store, clock: Clock, audit: RefusalAudit | None = None
) -> MembershipApi:
    """The endpoint of `settings.guard`, listening, with refusals audited in `store`."""
    guard = settings.guard
    assert guard.shared_secret is not None  # required by the settings when enabled
    reader = LedgerReader.open(settings.database.url.reveal())
    api = MembershipApi(
        reader=reader,
        bot_user_id=settings.bot.user_id,
        shared_secret=guard.shared_secret.reveal(),
        host=guard.host,
        port=guard.port,
        on_refusal=(audit or audit_refusals(store, clock)).refused,
    )
    try:
        await api.start()
    except BaseException:
        await reader.close()
        raise
    return api


# Refusals a standby answered, kept until it is active (at most this many; the oldest
# are dropped first, and counted in the log).
MAX_KEPT_REFUSALS = 10_000


@dataclass(frozen=True, slots=True)
class _Refusal:
    at: datetime
    actor: str
    reference: str | None
    details: dict[str, Any]


class RefusalAudit:
    """Writes `guard_refused` to the audit table (no personal data).

    A standby answers the guard too, but its database is read-only (fenced by the
    lease): while `may_write()` is false the refusals are kept in memory with their own
    time, and written, in order and once, by the first write after it became active.
    """

    def __init__(
        self, store: Store, clock: Clock, may_write: Callable[[], bool] | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._may_write = may_write or (lambda: True)
        self._kept: deque[_Refusal] = deque(maxlen=MAX_KEPT_REFUSALS)
        self._dropped = 0
        self._lock = asyncio.Lock()

    async def refused(
        self, question: rules.Question, answer: rules.Answer, reference: str | None
    ) -> None:
        details: dict[str, Any] = {"action": question.action, "reason": answer.reason}
        if question.room_id:
            details["room_id"] = question.room_id
        if question.invitees:
            details["invitees"] = list(question.invitees)
        if len(self._kept) == self._kept.maxlen:
            self._dropped += 1
        self._kept.append(_Refusal(self._clock.now(), question.user or "", reference, details))
        await self.flush()

    async def flush(self) -> None:
        """Write what is kept, if this process may write now (else keep it)."""
        async with self._lock:
            if not self._kept or not self._may_write():
                return
            batch = list(self._kept)
            async with self._store.transaction() as tx:
                for refusal in batch:
                    await tx.audit(
                        "guard_refused",
                        actor=refusal.actor,
                        reference=refusal.reference,
                        details=refusal.details,
                        now=refusal.at,
                    )
            for _ in batch:
                self._kept.popleft()
            if self._dropped:
                log.warning(
                    "membership API: %d refusal(s) answered as standby were not audited "
                    "(more than %d kept)",
                    self._dropped,
                    MAX_KEPT_REFUSALS,
                )
                self._dropped = 0


def audit_refusals(
    store: Store, clock: Clock, may_write: Callable[[], bool] | None = None
) -> RefusalAudit:
    """The audit of the guard's refusals; `may_write` false while this bot is standby."""
    return RefusalAudit(store, clock, may_write)
