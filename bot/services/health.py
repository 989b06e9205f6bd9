"""The health endpoint: `/healthz` (each dependency with its state) and `/metrics`.

An aiohttp application factory with typed application keys; `HealthServer`
runs it on the bot's own event loop (an `AppRunner`, no thread).

The endpoint is unauthenticated: `/healthz` answers fixed words only (a state per
dependency, never an exception's text, which names internal hosts and drivers; the
details are for operators, in `!sante`), and `/metrics` serves a snapshot at most
`METRICS_CACHE_S` old, so polling it cannot make the bot recompute every demande's
statistics on each request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.domain.followup import FollowUpRules
from bot.domain.metrics import CheckResult, MetricsSnapshot, render_prometheus
from bot.domain.stats import DemandeFilter, compute
from bot.matrix.port import Gateway
from bot.services.clock import Clock
from bot.services.statistics import collect
from bot.services.waits import within
from bot.store.db import Store

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 5.0
METRICS_CACHE_S = 10.0
OK, FAILING, NOT_CONFIGURED = "ok", "en panne", "non configuré"


Check = Callable[[], Awaitable[CheckResult]]


class Health:
    """The checks and the metrics, read by the HTTP handlers and by `!sante`."""

    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        clock: Clock,
        rules: FollowUpRules,
        smtp: tuple[str, int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.clock = clock
        self.rules = rules
        self.smtp = smtp  # the email bridge's relay, once it is on
        self.extra_metrics: Callable[[], Awaitable[dict[str, float]]] | None = None
        self._monotonic = monotonic
        self._cached: tuple[float, MetricsSnapshot] | None = None
        self._cache_lock = asyncio.Lock()

    async def checks(self) -> dict[str, CheckResult]:
        names = ("homeserver", "database", "smtp")
        results = await asyncio.gather(
            self._timed(self._homeserver),
            self._timed(self._database),
            self._timed(self._smtp),
        )
        return dict(zip(names, results, strict=True))

    @staticmethod
    async def _timed(check: Check) -> CheckResult:
        try:
            return await within(check(), CHECK_TIMEOUT_S)
        except TimeoutError:
            return CheckResult(FAILING, f"pas de réponse en {CHECK_TIMEOUT_S:.0f} s")
        except Exception as exc:
            return CheckResult(FAILING, type(exc).__name__ + (f": {exc}" if str(exc) else ""))

    async def _homeserver(self) -> CheckResult:
        await self.gateway.request("GET", "/_matrix/client/v3/account/whoami")
        return CheckResult(OK)

    async def _database(self) -> CheckResult:
        await self.store.ping()
        return CheckResult(OK)

    async def _smtp(self) -> CheckResult:
        if self.smtp is None:
            return CheckResult(NOT_CONFIGURED, "pont courriel désactivé", required=False)
        host, port = self.smtp
        reader, writer = await asyncio.open_connection(host, port)
        try:
            banner = await reader.readline()
            if not banner.startswith(b"220"):
                return CheckResult(FAILING, f"réponse inattendue du relais ({banner[:3]!r})")
            writer.write(b"QUIT\r\n")
            await writer.drain()
        finally:
            writer.close()
        return CheckResult(OK)

    async def cached_snapshot(self, max_age: float = METRICS_CACHE_S) -> MetricsSnapshot:
        """`snapshot()`, reused while younger than `max_age` seconds (one computation at a
        time: concurrent requests wait for it and share it)."""
        async with self._cache_lock:
            now = self._monotonic()
            if self._cached is None or now - self._cached[0] >= max_age:
                self._cached = (now, await self.snapshot())
            return self._cached[1]

    async def snapshot(self) -> MetricsSnapshot:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            by_status = await tx.count_demandes_by_status()
            outbox = await tx.outbox_stats()
            intruders = await tx.count_audit(["intruder_kicked", "intruder_banned"])
            undecryptable = await tx.count_audit(["undecryptable_event"])
            email_failures = await tx.count_audit(["email_failed", "email_delivery_failed"])
            demandes = await collect(tx, now, self.rules)
        stats = compute(demandes, DemandeFilter(), now)
        age = (now - outbox.oldest_pending_at).total_seconds() if outbox.oldest_pending_at else 0
        extra = await self.extra_metrics() if self.extra_metrics is not None else {}
        return MetricsSnapshot(
            demandes_by_status=by_status,
            share_resolved_7_days=stats.share_resolved_7,
            late_demandes=stats.late,
            outbox_pending=outbox.pending,
            outbox_oldest_age_seconds=max(0.0, age),
            delivery_failures=outbox.refused + email_failures,
            intruders_removed=intruders,
            undecryptable_events=undecryptable,
            extra=extra,
        )


HEALTH: web.AppKey[Health] = web.AppKey("health", Health)


def public_health(results: dict[str, CheckResult]) -> tuple[dict[str, Any], bool]:
    """What `/healthz` shows: fixed words per dependency, never a detail."""
    healthy = all(r.state == OK for r in results.values() if r.required)
    checks = {name: {"state": r.state, "required": r.required} for name, r in results.items()}
    return {"status": OK if healthy else FAILING, "checks": checks}, healthy


async def _healthz(request: web.Request) -> web.Response:
    body, healthy = public_health(await request.app[HEALTH].checks())
    return web.json_response(body, status=200 if healthy else 503)


async def _metrics(request: web.Request) -> web.Response:
    text = render_prometheus(await request.app[HEALTH].cached_snapshot())
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def make_app(health: Health) -> web.Application:
    app = web.Application()
    app[HEALTH] = health
    app.router.add_routes([web.get("/healthz", _healthz), web.get("/metrics", _metrics)])
    return app


class HealthServer:
    """The endpoint on the bot's loop; `port` is the bound one (useful with port 0)."""

    def __init__(self, health: Health, host: str, port: int) -> None:
        self._runner = web.AppRunner(make_app(health), access_log=None)
        self._host = host
        self._port = port
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._port
        log.info("health endpoint on http://%s:%s/healthz", self._host, self.port)

    async def close(self) -> None:
        await self._runner.cleanup()
