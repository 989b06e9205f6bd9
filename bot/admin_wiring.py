"""The admin room, the follow-up and retention jobs and the health endpoint, plugged
into a started `App` (after its rooms, outbox and dispatcher exist)."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.commands.admin import ADMIN, AdminCtx
from bot.domain import schedule
from bot.domain.followup import FollowUpRules
from bot.domain.policies import Policies
from bot.domain.retention import RetentionRules
from bot.services.admin_room import AdminRoom, ReceivedFile
from bot.services.directory_admin import DirectoryAdmin
from bot.services.followup import AgentNotices, FollowUp
from bot.services.health import Health, HealthServer
from bot.services.jobs import Job, Jobs
from bot.services.retention import Retention
from bot.services.synapse_admin import SynapseAdmin

if TYPE_CHECKING:
    from bot.app import App
    from bot.services.dispatch import Dispatcher


@dataclass
class AdminRuntime:
    room: AdminRoom
    directory: DirectoryAdmin
    followup: FollowUp
    notices: AgentNotices
    retention: Retention
    synapse: SynapseAdmin
    health: Health
    server: HealthServer | None
    jobs: Jobs
    jobs_enabled: bool

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"jobs": self.jobs.run()} if self.jobs_enabled else {}

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        await self.synapse.close()


def _set_policies(app: App, policies: Policies) -> None:
    """Every holder of the policies switches at once (one event loop: no half state)."""
    app.policies = policies
    holders: list[Any] = [app.rooms, app.opening]
    email = getattr(app, "email", None)
    if email is not None:
        holders.append(email.bridge)
    for holder in holders:
        if hasattr(holder, "policies"):
            holder.policies = policies


async def start_admin(app: App, dispatcher: Dispatcher) -> AdminRuntime:
    s = app.settings
    a = s.admin
    rules = FollowUpRules(
        first_answer_days=a.late_first_answer_business_days,
        followup_days=a.late_followup_business_days,
        digest_after_days=a.digest_after_days,
    )
    room = AdminRoom(
        store=app.store,
        gateway=app.gateway,
        outbox=app.outbox,
        clock=app.clock,
        bot_user_id=s.bot.user_id,
        commands=ADMIN,
        configured_room_id=a.room_id,
        room_name=a.room_name,
        room_version=s.bot.room_version,
        confirmation_minutes=a.confirmation_minutes,
        max_file_bytes=s.bot.max_attachment_bytes,
    )
    directory = DirectoryAdmin(
        store=app.store, rooms=app.rooms, clock=app.clock, sync_admin_room=room.sync_members
    )
    notices = AgentNotices(store=app.store, gateway=app.gateway, outbox=app.outbox, clock=app.clock)
    followup = FollowUp(
        store=app.store, rooms=app.rooms, notices=notices, clock=app.clock, rules=rules
    )
    email = getattr(app, "email", None)
    if email is not None:
        followup.email_bridge = email.bridge
    token = a.synapse_admin_token.reveal() if a.synapse_admin_token else None
    synapse = SynapseAdmin(s.homeserver.url, token)
    retention = Retention(
        store=app.store,
        synapse=synapse,
        clock=app.clock,
        rules=RetentionRules(
            usager_months=a.retention_usager_months,
            attachment_days=a.retention_attachment_days,
            draft_days=a.retention_draft_days,
            audit_days=a.retention_audit_days,
        ),
    )
    smtp = None
    email_settings = getattr(s, "email", None)
    if email_settings is not None and email_settings.enabled:
        smtp = (email_settings.relay_host, email_settings.relay_port)
    health = Health(store=app.store, gateway=app.gateway, clock=app.clock, rules=rules, smtp=smtp)

    async def make_ctx(sender: str, event_id: str, file: ReceivedFile | None) -> AdminCtx:
        assert app.policies is not None
        return AdminCtx(
            store=app.store,
            rooms=app.rooms,
            admin=room,
            directory=directory,
            followup=followup,
            retention=retention,
            health=health,
            clock=app.clock,
            rules=rules,
            policies_dir=s.policies.dir,
            get_policies=lambda: app.policies,  # type: ignore[arg-type,return-value]
            set_policies=lambda p: _set_policies(app, p),
            max_file_bytes=s.bot.max_attachment_bytes,
            sender=sender,
            event_id=event_id,
            file=file,
        )

    room.make_ctx = make_ctx
    dispatcher.admin = room
    dispatcher.retention = retention
    await room.ensure()

    jobs = Jobs(
        store=app.store,
        clock=app.clock,
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
        ],
    )
    server = None
    if s.health.enabled:
        server = HealthServer(health, s.health.host, s.health.port)
        await server.start()
    return AdminRuntime(
        room=room,
        directory=directory,
        followup=followup,
        notices=notices,
        retention=retention,
        synapse=synapse,
        health=health,
        server=server,
        jobs=jobs,
        jobs_enabled=a.jobs_enabled,
    )
