"""The standby: warm and silent until it holds the lease (`bot.services.lease`).

While another process is the active bot, this one has opened its database (READ
ONLY: the fence) and answers the homeserver guard's membership questions from it
(`bot.services.membership_api`, started before this), and `/healthz` says `standby`.
Nothing else: no Matrix login, no key upload, no crypto store opened, no listener,
no jobs. Once it holds the lease, `bot.app` goes on exactly as a restart does.
"""

from __future__ import annotations

import logging

from aiohttp import web

from bot.services.health import FAILING, OK
from bot.services.lease import Lease
from bot.services.waits import within
from bot.settings import HealthSettings
from bot.store.db import Store

log = logging.getLogger(__name__)

STANDBY = "standby"
CHECK_TIMEOUT_S = 5.0


class StandbyHealth:
    """`/healthz` of a standby: `standby`, with the database's state (it needs it to
    take over); 503 while the database does not answer."""

    def __init__(self, store: Store, lease: Lease, host: str, port: int) -> None:
        self._store = store
        self._lease = lease
        self._host = host
        self._port = port
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)

    async def _healthz(self, _request: web.Request) -> web.Response:
        try:
            await within(self._store.ping(), CHECK_TIMEOUT_S)
            database = OK
        except Exception:
            database = FAILING
        body = {
            "status": STANDBY,
            "checks": {"database": {"state": database, "required": True}},
        }
        return web.json_response(body, status=200 if database == OK else 503)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        addresses = self._runner.addresses
        port = int(addresses[0][1]) if addresses else self._port
        log.info("standby: health endpoint on http://%s:%s/healthz", self._host, port)

    async def close(self) -> None:
        await self._runner.cleanup()


async def wait_as_standby(store: Store, lease: Lease, health: HealthSettings) -> None:
    """Serve as the standby until this process holds the lease, then keep it."""
    server = StandbyHealth(store, lease, health.host, health.port) if health.enabled else None
    if server is not None:
        await server.start()
    log.info("standby: waiting for the lease (holder %s)", lease.holder)
    try:
        await lease.acquire()
    finally:
        # The active bot's own endpoint takes the port over (bot.admin_wiring).
        if server is not None:
            await server.close()
    lease.start_keeping()
