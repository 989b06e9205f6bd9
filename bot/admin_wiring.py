"""The admin room's console, the follow-up and retention jobs and the health endpoint,
built for the composition root (`bot.app`) from the parts they use; never the app."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from bot.commands.admin import ADMIN, AdminCtx
from bot.domain import schedule
from bot.domain.followup import FollowUpRules
from bot.domain.inactivity import InactivityRules
from bot.domain.retention import RetentionRules
from bot.domain.scope import OperatorScope
from bot.matrix.port import Gateway
from bot.policy_loader import load_policies
from bot.ports import Clock, EmailHooks, PoliciesRef, ReceivedFile, Sender
from bot.services.account_links import AccountLinks
from bot.services.admin_room import AdminConsole, AdminRoom
from bot.services.chart import render_png
from bot.services.directory_admin import DirectoryAdmin
from bot.services.followup import AgentNotices, FollowUp
from bot.services.group_admin import GroupAdmin, GroupConsole
from bot.services.health import Health, HealthServer
from bot.services.identity_pins import IdentityAcceptance, IdentityPins
from bot.services.inactivity import Inactivity
from bot.services.jobs import Job, Jobs
from bot.services.retention import Retention
from bot.services.room_guard import RoomGuard
from bot.services.room_specs import RoomSpecs
from bot.services.statistics import collect
from bot.services.synapse_admin import SynapseAdmin
from bot.services.welcome import Welcomes
from bot.settings import Settings
from bot.store.db import Store


@dataclass
class AdminRuntime:
    room: AdminRoom
    console: AdminConsole
    group_console: GroupConsole
    directory: DirectoryAdmin
    followup: FollowUp
    notices: AgentNotices
    inactivity: Inactivity
    retention: Retention
    synapse: SynapseAdmin
    health: Health
    server: HealthServer | None
    jobs: Jobs
    jobs_enabled: bool
    links: AccountLinks | None

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        out = {"jobs": self.jobs.run()} if self.jobs_enabled else {}
        if self.links is not None:
            out["account links"] = self.links.run()
        return out

    async def start(self) -> None:
        """The admin room exists and follows the operators; the health endpoint listens."""
        await self.room.ensure()
        if self.server is not None:
            await self.server.start()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        await self.synapse.close()


def build_admin(
    *,
    settings: Settings,
    store: Store,
    gateway: Gateway,
    sender: Sender,
    clock: Clock,
    policies: PoliciesRef,
    specs: RoomSpecs,
    guard: RoomGuard,
    email: EmailHooks,
    room: AdminRoom,
) -> AdminRuntime:
    s = settings
    a = s.admin
    rules = followup_rules(s)
    token = a.synapse_admin_token.reveal() if a.synapse_admin_token else None
    synapse = SynapseAdmin(s.homeserver.url, token)
    notices = AgentNotices(store=store, gateway=gateway, sender=sender, clock=clock, email=email)
    welcomes = Welcomes(
        store=store,
        notices=notices,
        sender=sender,
        email=email,
        clock=clock,
        # The agents' Element: bot.client_url without its room-link part.
        client_url=s.bot.client_url.split("#", 1)[0] if s.bot.client_url else None,
        admin_room_name=a.room_name,
    )
    directory = DirectoryAdmin(
        store=store,
        gateway=gateway,
        guard=guard,
        sender=sender,
        clock=clock,
        sync_admin_room=room.sync_members,
        welcomes=welcomes,
        account_of=synapse.user_by_email if synapse.configured else None,
        email=email,
    )
    # Accounts made at the first sign-in are looked for only with the admin token.
    links = (
        AccountLinks(
            store=store,
            synapse=synapse,
            directory=directory,
            bot_user_id=s.bot.user_id,
            every_seconds=s.onboarding.account_link_seconds,
        )
        if synapse.configured
        else None
    )
    inactivity = Inactivity(
        store=store,
        notices=notices,
        directory=directory,
        clock=clock,
        rules=InactivityRules(
            months=s.onboarding.inactivity_months,
            email_only_bal=s.onboarding.inactivity_email_only_bal,
        ),
        alert_operators=room.alert,
    )
    followup = FollowUp(
        store=store, sender=sender, notices=notices, email=email, clock=clock, rules=rules
    )
    retention = Retention(
        store=store,
        synapse=synapse,
        clock=clock,
        rules=RetentionRules(
            usager_months=a.retention_usager_months,
            attachment_days=a.retention_attachment_days,
            draft_days=a.retention_draft_days,
            audit_days=a.retention_audit_days,
        ),
        bot_user_id=s.bot.user_id,
    )
    smtp = (s.email.relay_host, s.email.relay_port) if s.email.enabled else None
    health = Health(store=store, gateway=gateway, clock=clock, rules=rules, smtp=smtp)
    pins = gateway.device_trust.pins
    identities = (
        IdentityAcceptance(
            pins=pins,
            invalidate=gateway.device_trust.invalidate,
            catch_up=gateway.catch_up_room_keys,
        )
        if isinstance(pins, IdentityPins)
        else None
    )

    async def make_ctx(
        sender_id: str, event_id: str, file: ReceivedFile | None, scope: OperatorScope
    ) -> AdminCtx:
        # A territorial operator's commands see and change only their départements.
        return AdminCtx(
            store=store.scoped(scope),
            directory=directory,
            sync_members=room.sync_members,
            followup=followup,
            retention=retention,
            health=health,
            identities=identities,
            collect_stats=collect,
            render_chart=render_png,
            clock=clock,
            rules=rules,
            policies_dir=s.policies.dir,
            load_policies=load_policies,
            policies_ref=policies,
            membership=specs.membership_rules,
            fetch_attachment=gateway.fetch_attachment,
            max_file_bytes=s.bot.max_attachment_bytes,
            sender=sender_id,
            event_id=event_id,
            file=file,
            inactivity=inactivity,
        )

    console = AdminConsole(
        room=room,
        commands=ADMIN,
        make_ctx=make_ctx,
        confirmation_minutes=a.confirmation_minutes,
    )
    group_console = GroupConsole(
        store=store,
        gateway=gateway,
        sender=sender,
        clock=clock,
        ops=GroupAdmin(
            store=store,
            directory=directory,
            clock=clock,
            rules=rules,
            membership=specs.membership_rules,
        ),
        policies=policies,
        confirmation_minutes=a.confirmation_minutes,
    )
    jobs = Jobs(
        store=store,
        clock=clock,
        jobs=[
            Job(
                "retention",
                lambda now: schedule.latest_daily(now, a.retention_hour),
                lambda: retention.run(actor="job:retention"),
            ),
            Job(
                "followup",
                lambda now: schedule.latest_daily(now, a.followup_hour),
                lambda: followup.remind(actor="job:followup"),
            ),
            Job(
                "digest",
                lambda now: schedule.latest_weekly(now, a.digest_weekday - 1, a.digest_hour),
                lambda: followup.send_digest(actor="job:digest"),
            ),
            Job(
                "inactivity",
                lambda now: schedule.latest_daily(now, a.followup_hour),
                lambda: inactivity.run(actor="job:inactivity"),
            ),
        ],
    )
    server = HealthServer(health, s.health.host, s.health.port) if s.health.enabled else None
    return AdminRuntime(
        room=room,
        console=console,
        group_console=group_console,
        directory=directory,
        followup=followup,
        notices=notices,
        inactivity=inactivity,
        retention=retention,
        synapse=synapse,
        health=health,
        server=server,
        jobs=jobs,
        jobs_enabled=a.jobs_enabled,
        links=links,
    )


def followup_rules(settings: Settings) -> FollowUpRules:
    """The late delays and the digest's, from the [admin] settings."""
    a = settings.admin
    return FollowUpRules(
        first_answer_days=a.late_first_answer_business_days,
        followup_days=a.late_followup_business_days,
        digest_after_days=a.digest_after_days,
    )
