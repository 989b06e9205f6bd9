"""The one place where everything is wired together, and run on one event loop.

Every object gets what it uses in its constructor, built here in dependency order;
nothing is assigned onto another object afterwards. Where two parts must reach each
other at run time without holding each other (the outbox wakes the guard, the guard
sends through the outbox), they share a `Wakeup` made first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from bot.admin_wiring import AdminRuntime, build_admin, followup_rules
from bot.domain.lease import LeaseLost, always_held
from bot.domain.policies import Policies
from bot.domain.retry import RetryPolicy
from bot.matrix.cross_signing import ensure_cross_signing
from bot.matrix.gateway import MatrixGateway
from bot.matrix.port import Gateway
from bot.policy_loader import load_policies
from bot.ports import EmailHooks, NoEmail, PoliciesRef
from bot.services import login
from bot.services.admin_room import AdminRoom
from bot.services.clock import Clock, SystemClock
from bot.services.companion import Companions
from bot.services.demande_room import DemandeRooms
from bot.services.device_notices import UnverifiedSessionNotices
from bot.services.dispatch import Dispatcher
from bot.services.event_retries import EventRetries
from bot.services.failures import database_unavailable, stop_if_requested
from bot.services.history import HistoryCopies
from bot.services.identity_pins import IdentityPins
from bot.services.lease import Lease
from bot.services.ledger import StoreLedger
from bot.services.membership_api import MembershipApi, RefusalAudit, start_membership_api
from bot.services.opening import CREATION_RETRY, Opening
from bot.services.outbox import Outbox
from bot.services.room_guard import RoomGuard
from bot.services.room_index import DemandeRoomIndex
from bot.services.room_key_archive import StoredKeyArchive
from bot.services.room_specs import RoomSpecs
from bot.services.spaces import Spaces
from bot.services.standby import wait_as_standby
from bot.services.undecryptable import Undecryptables
from bot.services.worker import Wakeup
from bot.settings import Settings
from bot.store.crypto import FieldCipher
from bot.store.db import Store
from bot.sync_loop import EventRouter, SyncLoop
from bridge.delivery import Relay
from bridge.wiring import EmailRuntime, build_hooks, build_runtime

log = logging.getLogger(__name__)

RECOVERY_EVERY_SECONDS = 60.0


@dataclass
class App:
    """The running bot. `start()` connects everything; `run()` serves until cancelled."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    initial_policies: Policies | None = None

    # Tests only: a bot without cross-signing, to show what Element then does. Never in
    # production, where the bot always cross-signs its device at start.
    _cross_sign: bool = field(default=True, repr=False)
    _stack: AsyncExitStack = field(init=False, default_factory=AsyncExitStack)
    _parts: Parts | None = field(init=False, default=None)
    _gateway: MatrixGateway | None = field(init=False, default=None)
    _lease: Lease | None = field(init=False, default=None)

    # -- what tests, `aplus dev` and the CLI look at, once started
    @property
    def parts(self) -> Parts:
        assert self._parts is not None, "start() first"
        return self._parts

    @property
    def store(self) -> Store:
        return self.parts.store

    @property
    def gateway(self) -> MatrixGateway:
        assert self._gateway is not None, "start() first"
        return self._gateway

    @property
    def policies(self) -> Policies:
        return self.parts.policies.current

    @property
    def rooms(self) -> DemandeRooms:
        return self.parts.rooms

    @property
    def opening(self) -> Opening:
        return self.parts.opening

    @property
    def outbox(self) -> Outbox:
        return self.parts.outbox

    @property
    def guard(self) -> RoomGuard:
        return self.parts.guard

    @property
    def sync(self) -> SyncLoop:
        return self.parts.sync

    @property
    def email(self) -> EmailRuntime | None:
        return self.parts.email

    @property
    def admin(self) -> AdminRuntime:
        return self.parts.admin

    @property
    def membership_api(self) -> MembershipApi | None:
        return self.parts.membership_api

    async def start(self) -> None:
        s = self.settings
        # The data folder holds the database and the crypto store: private to the service.
        s.data.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        policies = PoliciesRef(self.initial_policies or load_policies(s.policies.dir))
        cipher = FieldCipher.from_secret(s.secrets.data_key.reveal())
        # Two processes, one active (bot.services.lease): its store is fenced by the lease.
        lease = self._lease = (
            Lease.for_settings(s.database.url.reveal(), s.ha.renew_seconds, s.ha.ttl_seconds)
            if s.ha.enabled
            else None
        )
        store = await Store.open(
            s.database.url.reveal(),
            cipher,
            fence=lease.fence if lease is not None else None,
            application_name=lease.holder if lease is not None else None,
        )
        self._stack.push_async_callback(store.close)
        if lease is not None:
            self._stack.push_async_callback(lease.close)  # closed after all below
        # The homeserver guard (synapse_module/, deploy/synapse-module.md) asks this
        # endpoint about every invite and join in a demande room: it listens before
        # anything below invites anyone, and answers from the committed ledger only.
        membership_api: MembershipApi | None = None
        # A standby answers the guard but writes nothing: its refusals wait to be audited.
        refusal_audit = RefusalAudit(
            store, self.clock, (lambda: lease.epoch is not None) if lease is not None else None
        )
        if s.guard.enabled:
            membership_api = await start_membership_api(s, store, self.clock, refusal_audit)
            self._stack.push_async_callback(membership_api.close)
        if lease is not None:
            # The standby waits here, silent; once active, the start goes on as a restart.
            await wait_as_standby(store, lease, s.health)
            await refusal_audit.flush()
        held = lease.held if lease is not None else always_held
        # Parts built before the outbox that queue messages wake it through this.
        outbox_wakeup = Wakeup()
        identity_pins = IdentityPins(
            store=store, clock=self.clock, bot_user_id=s.bot.user_id, wake_outbox=outbox_wakeup.set
        )
        notices = UnverifiedSessionNotices(
            store=store, clock=self.clock, bot_user_id=s.bot.user_id, wake_outbox=outbox_wakeup.set
        )
        # The demande rooms: only they leave nio's memory when idle (the ~100,000).
        index = DemandeRoomIndex(store)
        await index.load()
        gateway = MatrixGateway(
            homeserver=s.homeserver.url,
            user_id=s.bot.user_id,
            device_name=s.bot.device_name,
            store_dir=s.bot.store_dir,
            pickle_key=s.secrets.pickle_key.reveal(),
            require_cross_signed_devices=s.bot.require_cross_signed_devices,
            max_attachment_bytes=s.bot.max_attachment_bytes,
            key_archive=StoredKeyArchive(store, self.clock),
            identity_pins=identity_pins,
            on_unverified=notices.withheld,
            held=held,
            forgettable=index.__contains__,
        )
        self._stack.push_async_callback(gateway.close)
        self._gateway = gateway
        await login.connect(s.bot, store, gateway)
        if self._cross_sign:
            async with store.transaction() as tx:
                status = await ensure_cross_signing(
                    gateway.client, tx, password=s.bot.password.reveal()
                )
            log.info(
                "cross-signing %s: device %s signed=%s",
                status.action,
                status.device_id,
                status.device_signed,
            )
        else:
            log.warning("cross-signing skipped (test switch): Element will exclude this bot")

        self._parts = parts = await assemble(
            s,
            store=store,
            gateway=gateway,
            clock=self.clock,
            policies=policies,
            outbox_wakeup=outbox_wakeup,
            membership_api=membership_api,
            held=held,
            index=index,
        )
        if parts.email is not None:
            self._stack.push_async_callback(parts.email.close)
            await parts.email.listen()
        self._stack.push_async_callback(parts.admin.close)
        await parts.admin.start()

    async def run(self) -> None:
        """Serve until cancelled. Unfinished work from a previous run is finished first."""
        p = self.parts
        # Demandes whose room was being built when the bot stopped are finished before any
        # new event is handled, so that the events of their rooms are recognised.
        await self._recover()
        try:
            await self._serve(p)
        except* LeaseLost:
            # Another process is the active bot: end (non-zero), restarted as the standby.
            raise LeaseLost("another bot took the lease over") from None

    async def _serve(self, p: Parts) -> None:
        async with asyncio.TaskGroup() as tasks:
            if self._lease is not None:
                tasks.create_task(self._lease.lost(), name="lease")
            tasks.create_task(p.sync.run(), name="sync")
            tasks.create_task(p.outbox.run(), name="outbox")
            tasks.create_task(p.guard.run(), name="guard")
            tasks.create_task(p.spaces.run(), name="spaces")
            tasks.create_task(p.companions.run(), name="companions")
            tasks.create_task(p.undecryptables.run(), name="undecryptable")
            tasks.create_task(self._check_rooms(), name="state check")
            tasks.create_task(self._recover_periodically(), name="recover")
            if p.email is not None:
                for name, worker in p.email.workers().items():
                    tasks.create_task(worker, name=name)
            for name, worker in p.admin.workers().items():
                tasks.create_task(worker, name=name)

    async def _recover(self) -> None:
        """Finish what a stop or an outage interrupted; every step is idempotent, and one
        piece of work that fails never stops the others nor the service."""
        p = self.parts
        try:
            await p.opening.resume_all()
        except Exception as exc:
            stop_if_requested(exc)  # a failed cleanup after the stop: the stop goes on
            if not database_unavailable(exc):
                log.exception("recovery of the openings failed; next round in a minute")
            else:
                log.warning("recovery postponed, database unavailable")
        try:
            # Copies of the earlier exchange for late participants, left by a stop.
            if p.rooms.history is not None:
                await p.rooms.history.run_pending()
        except Exception as exc:
            stop_if_requested(exc)
            if not database_unavailable(exc):
                log.exception("history copies failed; next round in a minute")
        p.guard.wake()
        p.outbox.flush_soon()
        if p.email is not None:
            p.email.wake()

    async def _recover_periodically(self) -> None:
        while True:
            await asyncio.sleep(RECOVERY_EVERY_SECONDS)
            await self._recover()

    async def _check_rooms(self) -> None:
        """The level-triggered check of the open rooms' protected state, once at start
        (a change made while the bot was down, or lost in a sync gap, is reverted)."""
        try:
            reverted = await self.parts.guard.check_open_rooms()
        except Exception:
            log.exception("start-up check of the rooms' state failed")
            return
        if reverted:
            log.warning("state reverted in %d room(s) at start", reverted)

    async def close(self) -> None:
        await self._stack.aclose()


async def assemble(
    s: Settings,
    *,
    store: Store,
    gateway: Gateway,
    clock: Clock,
    policies: PoliciesRef,
    outbox_wakeup: Wakeup | None = None,
    relay: Relay | None = None,
    membership_api: MembershipApi | None = None,
    held: Callable[[], bool] = always_held,
    index: DemandeRoomIndex | None = None,
) -> Parts:
    """Every service, wired in dependency order, over the given transports.

    No I/O of its own beyond reading the store: `App.start` gives it the real gateway
    (logged in) and the relay of the settings, then opens the listeners; the service
    tests (tests/services/) give it a recording gateway and a recording relay.
    ``outbox_wakeup``: shared with the parts built before the gateway that queue
    messages (the identity pins, the unverified-session notices); ``index``: the demande
    rooms' index, when the gateway was given it (which rooms it may forget).
    """
    outbox_wakeup = outbox_wakeup or Wakeup()
    bot_id = s.bot.user_id
    retry = RetryPolicy(
        attempts=s.bot.event_retry_attempts, base_seconds=s.bot.event_retry_base_seconds
    )
    specs = RoomSpecs(policies=policies, bot_user_id=bot_id, room_version=s.bot.room_version)
    guard_wakeup = Wakeup()
    outbox = Outbox(
        store,
        gateway,
        clock,
        StoreLedger(store, bot_id),
        wake_guard=guard_wakeup.set,
        wakeup=outbox_wakeup,
    )
    guard = RoomGuard(
        store=store,
        gateway=gateway,
        clock=clock,
        specs=specs,
        sender=outbox,
        invite_retry=retry,
        wakeup=guard_wakeup,
    )
    email_parts = None
    email: EmailHooks = NoEmail()
    if s.email.enabled:
        email_parts = await build_hooks(
            settings=s.email,
            store=store,
            gateway=gateway,
            sender=outbox,
            policies=policies,
            clock=clock,
            relay=relay,
            held=held,
            client_url=s.bot.client_url,
        )
        email = email_parts.bridge
    undecryptables = Undecryptables(
        store=store,
        gateway=gateway,
        clock=clock,
        sender=outbox,
        notice_after_seconds=s.bot.undecryptable_notice_after_seconds,
    )
    history = HistoryCopies(
        store=store,
        gateway=gateway,
        policies=policies,
        clock=clock,
        bot_user_id=bot_id,
        sender=outbox,
    )
    spaces_wakeup = Wakeup()
    spaces = Spaces(store=store, gateway=gateway, specs=specs, wakeup=spaces_wakeup)
    await spaces.load()
    companions = Companions(
        store=store, gateway=gateway, specs=specs, sender=outbox, clock=clock, wakeup=Wakeup()
    )
    await companions.load()
    rooms = DemandeRooms(
        companions=companions,
        spaces=spaces_wakeup,
        history=history,
        store=store,
        clock=clock,
        policies=policies,
        specs=specs,
        guard=guard,
        email=email,
        sender=outbox,
        undecryptables=undecryptables,
        max_attachment_bytes=s.bot.max_attachment_bytes,
    )
    admin_room = AdminRoom(
        store=store,
        gateway=gateway,
        sender=outbox,
        clock=clock,
        bot_user_id=bot_id,
        configured_room_id=s.admin.room_id,
        room_name=s.admin.room_name,
        room_version=s.bot.room_version,
    )
    if index is None:
        index = DemandeRoomIndex(store)
        await index.load()
    opening = Opening(
        store=store,
        gateway=gateway,
        sender=outbox,
        clock=clock,
        policies=policies,
        specs=specs,
        index=index,
        email=email,
        # A refused createRoom: a few attempts, then the aidant and the operators told.
        retry=CREATION_RETRY,
        alert_operators=admin_room.alert,
        followup_rules=followup_rules(s),
        client_url=s.bot.client_url,
        spaces=spaces_wakeup,
    )
    admin = build_admin(
        settings=s,
        store=store,
        gateway=gateway,
        sender=outbox,
        clock=clock,
        policies=policies,
        specs=specs,
        guard=guard,
        email=email,
        room=admin_room,
    )
    retries = EventRetries(
        store=store, clock=clock, sender=outbox, policy=retry, bot_user_id=bot_id
    )
    dispatcher = Dispatcher(
        store=store,
        gateway=gateway,
        clock=clock,
        bot_user_id=bot_id,
        index=index,
        rooms=rooms,
        opening=opening,
        admin=admin.console,
        group=admin.group_console,
        retention=admin.retention,
        undecryptables=undecryptables,
        spaces=spaces,
        companions=companions,
    )
    router = EventRouter(
        bot_user_id=bot_id,
        on_invite=dispatcher.on_invite,
        on_room_event=dispatcher.on_room_event,
        retries=retries,
        concurrency=s.bot.room_concurrency,
    )
    sync = SyncLoop(
        store=store,
        gateway=gateway,
        router=router,
        undecryptables=undecryptables,
        retries=retries,
    )
    email_runtime = None
    if email_parts is not None:
        email_runtime = await build_runtime(
            settings=s.email,
            parts=email_parts,
            store=store,
            gateway=gateway,
            sender=outbox,
            rooms=rooms,
            clock=clock,
            held=held,
        )
    return Parts(
        store=store,
        gateway=gateway,
        policies=policies,
        outbox=outbox,
        guard=guard,
        rooms=rooms,
        opening=opening,
        undecryptables=undecryptables,
        sync=sync,
        email=email_runtime,
        admin=admin,
        membership_api=membership_api,
        spaces=spaces,
        companions=companions,
        dispatcher=dispatcher,
        router=router,
        retries=retries,
    )


@dataclass(frozen=True)
class Parts:
    store: Store
    gateway: Gateway
    policies: PoliciesRef
    outbox: Outbox
    guard: RoomGuard
    rooms: DemandeRooms
    opening: Opening
    undecryptables: Undecryptables
    sync: SyncLoop
    email: EmailRuntime | None
    admin: AdminRuntime
    membership_api: MembershipApi | None
    spaces: Spaces
    companions: Companions
    dispatcher: Dispatcher
    router: EventRouter
    retries: EventRetries
