"""The email bridge plugged into a started `App`: hooks, workers and the listener."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.delivery import EmailDelivery
from bridge.inbound import InboundHandler, listening_address, start_listener
from bridge.outbound import EmailBridge
from bridge.posting import InboxPoster

if TYPE_CHECKING:
    from bot.app import App


@dataclass
class EmailRuntime:
    bridge: EmailBridge
    delivery: EmailDelivery
    poster: InboxPoster
    handler: InboundHandler
    server: asyncio.Server

    @property
    def address(self) -> tuple[str, int]:
        """Where the inbound listener listens (host, port)."""
        return listening_address(self.server)

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"email-delivery": self.delivery.run(), "email-posting": self.poster.run()}

    def wake(self) -> None:
        """Leftovers of a previous run: deliver and post them now."""
        self.delivery.wake()
        self.poster.wake()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_email(app: App) -> EmailRuntime:
    """Build the bridge on the app's store, gateway and rooms; start listening."""
    settings = app.settings.email
    assert app.policies is not None
    bridge = EmailBridge(settings=settings, store=app.store, policies=app.policies, clock=app.clock)
    await bridge.load_key()
    bridge.gateway = app.gateway
    app.rooms.email = bridge
    app.opening.email = bridge
    delivery = EmailDelivery(
        store=app.store, settings=settings, clock=app.clock, wake_matrix=app.outbox.wake
    )
    bridge.on_enqueued(delivery.wake)
    poster = InboxPoster(
        store=app.store, rooms=app.rooms, gateway=app.gateway, settings=settings, clock=app.clock
    )
    handler = InboundHandler(
        store=app.store,
        settings=settings,
        clock=app.clock,
        on_committed=poster.wake,
        wake_matrix=app.outbox.wake,
    )
    server = await start_listener(handler, settings)
    return EmailRuntime(bridge, delivery, poster, handler, server)
