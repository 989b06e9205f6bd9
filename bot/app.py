"""The one place where everything is wired together, and run on one event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from bot.admin_wiring import AdminRuntime, start_admin
from bot.domain.policies import Policies
from bot.matrix.cross_signing import ensure_cross_signing
from bot.matrix.errors import MatrixError
from bot.matrix.gateway import MatrixGateway, SavedLogin
from bot.policy_loader import load_policies
from bot.services.clock import Clock, SystemClock
from bot.services.demande_room import DemandeRooms
from bot.services.dispatch import Dispatcher
from bot.services.membership_api import MembershipApi, start_membership_api
from bot.services.opening import Opening
from bot.services.outbox import Outbox
from bot.services.undecryptable import Undecryptables
from bot.settings import Settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from bot.sync_loop import EventRouter, SyncLoop
from bridge.wiring import EmailRuntime, start_email

log = logging.getLogger(__name__)

LOGIN_USER = "matrix.user_id"
LOGIN_DEVICE = "matrix.device_id"
LOGIN_TOKEN = "matrix.access_token"  # noqa: S105 (a key name)


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1]


@dataclass
class App:
    """The running bot. `start()` connects everything; `run()` serves until cancelled."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    policies: Policies | None = None

    store: Store = field(init=False)
    gateway: MatrixGateway = field(init=False)
    outbox: Outbox = field(init=False)
    opening: Opening = field(init=False)
    rooms: DemandeRooms = field(init=False)
    sync: SyncLoop = field(init=False)
    undecryptable: Undecryptables = field(init=False)
    # Tests only: a bot without cross-signing, to show what Element then does. Never in
    # production, where the bot always cross-signs its device at start.
    _cross_sign: bool = field(default=True, repr=False)
    email: EmailRuntime | None = field(init=False, default=None)
    admin: AdminRuntime = field(init=False)
    membership_api: MembershipApi | None = field(init=False, default=None)
    _stack: AsyncExitStack = field(init=False, default_factory=AsyncExitStack)

    async def start(self) -> None:
        s = self.settings
        # The data folder holds the database and the crypto store: private to the service.
        s.data.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.policies is None:
            self.policies = load_policies(s.policies.dir)
        cipher = FieldCipher.from_secret(s.secrets.data_key.reveal())
        self.store = await Store.open(s.database.url.reveal(), cipher)
        self._stack.push_async_callback(self.store.close)

        # The homeserver guard (synapse_module/, deploy/synapse-module.md) asks this
        # endpoint about every invite and join in a demande room: it listens before
        # anything below invites anyone, and answers from the committed ledger only.
        if s.guard.enabled:
            self.membership_api = await start_membership_api(s, self.store, self.clock)
            self._stack.push_async_callback(self.membership_api.close)

        self.gateway = MatrixGateway(
            homeserver=s.homeserver.url,
            user_id=s.bot.user_id,
            device_name=s.bot.device_name,
            store_dir=s.bot.store_dir,
            pickle_key=s.secrets.pickle_key.reveal(),
            require_cross_signed_devices=s.bot.require_cross_signed_devices,
            max_attachment_bytes=s.bot.max_attachment_bytes,
        )
        self._stack.push_async_callback(self.gateway.close)
        await self._login()

        if self._cross_sign:
            async with self.store.transaction() as tx:
                status = await ensure_cross_signing(
                    self.gateway.client,
                    tx,
                    password=s.bot.password.reveal(),
                )
            log.info(
                "cross-signing %s: device %s signed=%s",
                status.action,
                status.device_id,
                status.device_signed,
            )
        else:
            log.warning("cross-signing skipped (test switch): Element will exclude this bot")

        allowed = _allowed_servers(self.policies.membership.allowed_homeservers, s.bot.user_id)
        self.rooms = DemandeRooms(
            store=self.store,
            gateway=self.gateway,
            policies=self.policies,
            clock=self.clock,
            bot_user_id=s.bot.user_id,
            allowed_servers=allowed,
            room_version=s.bot.room_version,
        )
        self.outbox = Outbox(self.store, self.gateway, self.clock, self.rooms.recipients)
        self.rooms.outbox = self.outbox
        self.opening = Opening(
            store=self.store,
            gateway=self.gateway,
            outbox_=self.outbox,
            policies=self.policies,
            clock=self.clock,
            bot_user_id=s.bot.user_id,
            allowed_servers=allowed,
            room_version=s.bot.room_version,
        )
        await self.opening.load_room_index()
        dispatcher = Dispatcher(
            store=self.store,
            gateway=self.gateway,
            opening=self.opening,
            rooms=self.rooms,
            outbox=self.outbox,
            clock=self.clock,
            bot_user_id=s.bot.user_id,
        )
        router = EventRouter(
            bot_user_id=s.bot.user_id,
            on_invite=dispatcher.on_invite,
            on_room_event=dispatcher.on_room_event,
        )
        self.undecryptable = Undecryptables(
            store=self.store,
            gateway=self.gateway,
            clock=self.clock,
            outbox=self.outbox,
            notice_after_seconds=s.bot.undecryptable_notice_after_seconds,
            handler=dispatcher.on_room_event,
        )
        self.rooms.undecryptable = self.undecryptable
        self.sync = SyncLoop(
            store=self.store,
            gateway=self.gateway,
            router=router,
            after_batch=self.undecryptable.after_sync,
        )
        if s.email.enabled:
            self.email = await start_email(self)
            self._stack.push_async_callback(self.email.close)
        # The admin room, follow-up and retention jobs, health endpoint (after email:
        # reminders reach email-only participants through the bridge).
        self.admin = await start_admin(self, dispatcher)
        self._stack.push_async_callback(self.admin.close)

    async def _login(self) -> None:
        s = self.settings
        async with self.store.transaction() as tx:
            user = await tx.get_state(LOGIN_USER)
            device = await tx.get_state(LOGIN_DEVICE)
            token = await tx.get_secret(LOGIN_TOKEN)
        saved = None
        if user == s.bot.user_id and device and token:
            saved = SavedLogin(user, device, token.decode())
        login = await self.gateway.connect(
            saved=saved,
            password=s.bot.password.reveal(),
            access_token=s.bot.access_token.reveal() if s.bot.access_token else None,
        )
        if login != saved:
            async with self.store.transaction() as tx:
                await tx.set_state(LOGIN_USER, login.user_id)
                await tx.set_state(LOGIN_DEVICE, login.device_id)
                await tx.set_secret(LOGIN_TOKEN, login.access_token.encode())
        log.info("logged in as %s, device %s", login.user_id, login.device_id)

    async def run(self) -> None:
        """Serve until cancelled. Unfinished work from a previous run is finished first."""
        # Demandes whose room was being built when the bot stopped are finished before any
        # new event is handled, so that the events of their rooms are recognised.
        await self._recover()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.sync.run(), name="sync")
            tasks.create_task(self.outbox.run(), name="outbox")
            tasks.create_task(self.undecryptable.run(), name="undecryptable")
            tasks.create_task(self._recover_periodically(), name="recover")
            if self.email is not None:
                for name, worker in self.email.workers().items():
                    tasks.create_task(worker, name=name)
            for name, worker in self.admin.workers().items():
                tasks.create_task(worker, name=name)

    async def _recover(self) -> None:
        """Finish what a stop or an outage interrupted; every step is idempotent."""
        try:
            await self.opening.resume_all()
            await self.rooms.invite_pending()
            await self.rooms.reconcile_pending()
        except MatrixError as exc:
            log.warning("recovery postponed, homeserver unavailable: %s", exc)
        self.outbox.wake()
        if self.email is not None:
            self.email.wake()

    async def _recover_periodically(self, every_seconds: float = 60.0) -> None:
        while True:
            await asyncio.sleep(every_seconds)
            try:
                await self._recover()
            except Exception:
                # Database down: try again at the next round, nothing is lost.
                log.exception("recovery round failed")

    async def close(self) -> None:
        await self._stack.aclose()


def _allowed_servers(configured: Sequence[str], bot_user_id: str) -> tuple[str, ...]:
    """The bot's own server is always allowed, or its own rooms would lock it out."""
    own = server_of(bot_user_id)
    return tuple(dict.fromkeys([own, *configured]))
