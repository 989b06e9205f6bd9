"""`/healthz` answers fixed words only; `/metrics` is computed at most once per period.

The real aiohttp application on loopback; the checks and the snapshot are replaced at the
seam (a failing homeserver whose error names an internal host, a counted snapshot).
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from bot.domain.metrics import MetricsSnapshot
from bot.services.health import METRICS_CACHE_S, CheckResult, Health, make_app

INTERNAL = "Cannot connect to host synapse.interne.example:8008 ssl:default [Connection refused]"


class SeamHealth(Health):
    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(
            store=None,  # type: ignore[arg-type]
            gateway=None,  # type: ignore[arg-type]
            clock=None,  # type: ignore[arg-type]
            rules=None,  # type: ignore[arg-type]
            monotonic=lambda: self.now,
        )
        self.computed = 0

    async def _homeserver(self) -> CheckResult:
        raise OSError(INTERNAL)

    async def _database(self) -> CheckResult:
        return CheckResult("ok")

    async def snapshot(self) -> MetricsSnapshot:
        self.computed += 1
        return MetricsSnapshot({}, None, self.computed, 0, 0.0, 0, 0, 0)


async def _serve(health: Health) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(make_app(health))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_healthz_shows_states_not_error_texts_which_stay_for_sante() -> None:
    health = SeamHealth()
    runner, base = await _serve(health)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as resp:
            status, raw = resp.status, await resp.text()
            body: dict[str, Any] = await resp.json()
    finally:
        await runner.cleanup()
    assert status == 503
    assert "synapse.interne" not in raw and "OSError" not in raw and "refused" not in raw
    assert body == {
        "status": "en panne",
        "checks": {
            "homeserver": {"state": "en panne", "required": True},
            "database": {"state": "ok", "required": True},
            "smtp": {"state": "non configuré", "required": False},
        },
    }
    # The operators' view (`!sante`) keeps the detail.
    assert INTERNAL in (await health.checks())["homeserver"].detail


async def test_metrics_are_computed_once_per_period_however_often_polled() -> None:
    health = SeamHealth()
    runner, base = await _serve(health)
    try:
        async with aiohttp.ClientSession() as http:

            async def late() -> str:
                async with http.get(f"{base}/metrics") as resp:
                    assert resp.status == 200
                    text = await resp.text()
                return next(ln for ln in text.splitlines() if ln.startswith("aplus_demandes_late "))

            first = [await late() for _ in range(20)]
            health.now += METRICS_CACHE_S  # the period is over
            second = await late()
    finally:
        await runner.cleanup()
    assert health.computed == 2
    assert set(first) == {"aplus_demandes_late 1"} and second == "aplus_demandes_late 2"
