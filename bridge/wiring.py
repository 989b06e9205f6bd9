"""The email bridge's parts, built for the composition root (`bot.app`), in two steps:

1. `build_hooks`, before the room services: the delivery worker and the `EmailHooks`
   they are given (the bridge queues emails in their transactions);
2. `build_runtime`, after them: the inbox poster (it posts replies through the room
   service) and the SMTP/LMTP listener's handler; `EmailRuntime.listen` opens the port.

Neither sees the application object; each gets what it uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bot.matrix.port import Gateway
from bot.ports import PoliciesRef, Sender
from bot.services.clock import Clock
from bot.services.demande_room import DemandeRooms
from bot.settings import EmailSettings
from bot.store.db import Store
from bridge.delivery import EmailDelivery, Relay
from bridge.digest import EmailDigests
from bridge.inbound import InboundHandler, listening_address, start_listener
from bridge.outbound import EmailBridge
from bridge.posting import InboxPoster


@dataclass(frozen=True)
class EmailHooksParts:
    bridge: EmailBridge
    delivery: EmailDelivery


async def build_hooks(
    *,
    settings: EmailSettings,
    store: Store,
    gateway: Gateway,
    sender: Sender,
    policies: PoliciesRef,
    clock: Clock,
    held: Callable[[], bool],
    client_url: str | None = None,
    relay: Relay | None = None,
) -> EmailHooksParts:
    """``relay`` None: the relay of the settings, over aiosmtplib."""
    delivery = EmailDelivery(
        store=store,
        settings=settings,
        clock=clock,
        wake_matrix=sender.flush_soon,
        held=held,
        relay=relay,
    )
    bridge = EmailBridge(
        settings=settings,
        store=store,
        policies=policies,
        clock=clock,
        fetch_attachment=gateway.fetch_attachment,
        wake_delivery=delivery.wake,
        client_url=client_url,
    )
    await bridge.load_key()
    return EmailHooksParts(bridge, delivery)


@dataclass
class EmailRuntime:
    bridge: EmailBridge
    delivery: EmailDelivery
    poster: InboxPoster
    handler: InboundHandler
    digests: EmailDigests
    settings: EmailSettings
    server: asyncio.Server | None = None

    async def listen(self) -> None:
        """Open the SMTP/LMTP listener (the service tests call the handler directly)."""
        self.server = await start_listener(self.handler, self.settings)

    @property
    def address(self) -> tuple[str, int]:
        """Where the inbound listener listens (host, port)."""
        assert self.server is not None, "listen() first"
        return listening_address(self.server)

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {
            "email-delivery": self.delivery.run(),
            "email-posting": self.poster.run(),
            "email-digest": self.digests.run(),
        }

    def wake(self) -> None:
        """Leftovers of a previous run: deliver and post them now."""
        self.delivery.wake()
        self.poster.wake()
        self.digests.wake()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.handler.close()  # its parser thread


async def build_runtime(
    *,
    settings: EmailSettings,
    parts: EmailHooksParts,
    store: Store,
    gateway: Gateway,
    sender: Sender,
    rooms: DemandeRooms,
    clock: Clock,
    held: Callable[[], bool],
) -> EmailRuntime:
    """The inbox poster and the listener's handler (not listening yet: `listen`)."""
    poster = InboxPoster(
        store=store,
        rooms=rooms,
        gateway=gateway,
        sender=sender,
        settings=settings,
        clock=clock,
    )
    handler = InboundHandler(
        store=store,
        settings=settings,
        clock=clock,
        on_committed=poster.wake,
        wake_matrix=sender.flush_soon,
        held=held,
    )
    digests = EmailDigests(store=store, bridge=parts.bridge, clock=clock)
    return EmailRuntime(parts.bridge, parts.delivery, poster, handler, digests, settings)
