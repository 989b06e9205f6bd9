"""A responsable runs their group from their follow-up room (`bot.commands.group`).

`GroupAdmin` is what the commands reach through the `GroupOps` port: the group's
demandes (metadata), its agents, and the directory changes a responsable may make,
done by the operators' own path (`DirectoryAdmin`) and audited the same way, with
`by: responsable` and the group. `GroupConsole` takes the messages of a responsable in
their own follow-up room: only there, only for the group they belong to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from nio import RoomMessageText

from bot.commands.framework import (
    CANCEL_COMMAND,
    CONFIRM_COMMAND,
    CommandFailed,
    NotACommand,
    ParseFailure,
    PendingConfirmation,
    Reply,
    failure_reply,
)
from bot.commands.group import GROUP, GroupCtx
from bot.domain.followup import FollowUpRules
from bot.domain.model import Agent, DirectoryConflict, Group, OrganisationKind, Role
from bot.domain.policies import MembershipRules, fold
from bot.domain.stats import DemandeStat, Stats
from bot.matrix import attachments as files
from bot.matrix import content as mx
from bot.matrix.port import Gateway
from bot.ports import PoliciesRef, Sender
from bot.services.chart import render_png
from bot.services.clock import Clock
from bot.services.directory_admin import DirectoryAdmin
from bot.services.followup import NOTICE_ROOM_KEY
from bot.services.statistics import collect
from bot.store.db import Store

log = logging.getLogger(__name__)

ALSO_HERE = "\n\nDans cette discussion aussi : !mesdemandes (vos demandes et où elles en sont)."


class GroupAdmin:
    def __init__(
        self,
        *,
        store: Store,
        directory: DirectoryAdmin,
        clock: Clock,
        rules: FollowUpRules,
        membership: Callable[[], MembershipRules],
    ) -> None:
        self.store = store
        self.directory = directory
        self.clock = clock
        self.rules = rules
        self.membership = membership

    async def demandes(self, group: Group) -> Sequence[DemandeStat]:
        async with self.store.transaction() as tx:
            every = await collect(tx, self.clock.now(), self.rules)
        return [d for d in every if group.name in d.target_groups]  # names are unique

    async def agents(self, group: Group) -> Sequence[Agent]:
        async with self.store.transaction() as tx:
            return list(await tx.agents_of_group(group.id))

    def chart(self, stats: Stats, title: str) -> bytes:
        return render_png(stats, title)

    def homeserver_allowed(self, server: str) -> bool:
        return self.membership().homeserver_allowed(server)

    async def find_agent(self, text: str) -> Agent | None:
        text = text.strip()
        async with self.store.transaction() as tx:
            if text.startswith("@"):
                return await tx.get_agent_by_matrix_id(text)
            if "@" in text:
                return await tx.get_agent_by_email(text)
            number = text.removeprefix("n°").strip()
            return await tx.get_agent(int(number)) if number.isdigit() else None

    async def add_agent(
        self,
        group: Group,
        *,
        first_name: str,
        last_name: str,
        roles: frozenset[Role],
        matrix_id: str | None,
        email: str | None,
        actor: str,
    ) -> Agent | str:
        async with self.store.transaction() as tx:
            for value, lookup in (
                (matrix_id, tx.get_agent_by_matrix_id),
                (email, tx.get_agent_by_email),
            ):
                if value and await lookup(value) is not None:
                    return (
                        f"{value} est déjà dans l'annuaire : demandez aux opérateurs du "
                        "service de le rattacher à votre groupe."
                    )
            try:
                agent, _ = await tx.upsert_agent(
                    first_name=first_name,
                    last_name=last_name,
                    email=email,
                    matrix_id=matrix_id,
                    group_id=group.id,
                    roles=roles,
                )
            except DirectoryConflict as exc:
                return str(exc)
            await tx.audit(
                "agent_added",
                actor=actor,
                details={
                    "agent": agent.id,
                    "roles": sorted(r.value for r in roles),
                    "group": group.id,
                    "by": "responsable",
                },
                now=self.clock.now(),
            )
        await self.directory.join_group_demandes([agent.id], actor=actor)
        return agent

    async def departures(self, agent: Agent) -> Sequence[str]:
        async with self.store.transaction() as tx:
            return [d.reference for d in await self.directory.departures(tx, agent)]

    async def deactivate(self, agent: Agent, *, actor: str) -> Sequence[str]:
        left = await self.directory.deactivate(agent.id, actor=actor)
        return [d.reference for d in left]

    async def exported(self, group: Group, count: int, *, actor: str) -> None:
        async with self.store.transaction() as tx:
            await tx.audit(
                "demandes_exported",
                actor=actor,
                details={"count": count, "group": group.id, "by": "responsable"},
                now=self.clock.now(),
            )


class GroupConsole:
    """A responsable's commands in their own follow-up room."""

    def __init__(
        self,
        *,
        store: Store,
        gateway: Gateway,
        sender: Sender,
        clock: Clock,
        ops: GroupAdmin,
        policies: PoliciesRef,
        confirmation_minutes: int,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.sender = sender
        self.clock = clock
        self.ops = ops
        self.policies = policies
        self.confirmation = timedelta(minutes=confirmation_minutes)
        self._pending: dict[str, tuple[PendingConfirmation, datetime]] = {}

    def _pending_of(self, sender: str, now: datetime) -> PendingConfirmation | None:
        item = self._pending.get(sender)
        if item is None or now > item[1]:
            self._pending.pop(sender, None)
            return None
        return item[0]

    async def _responsable_here(self, room_id: str, sender: str) -> tuple[Agent, Group] | None:
        async with self.store.transaction() as tx:
            agent = await tx.get_agent_by_matrix_id(sender)
            if agent is None or not agent.active or not agent.has(Role.RESPONSABLE):
                return None
            if agent.group_id is None:
                return None
            if await tx.get_state(NOTICE_ROOM_KEY.format(agent_id=agent.id)) != room_id:
                return None
            group = await tx.get_group(agent.group_id)
        return (agent, group) if group is not None else None

    async def handles(self, room_id: str, event: Any) -> bool:
        """True if the message was a group command of this room's responsable (done)."""
        if not isinstance(event, RoomMessageText) or not isinstance(event.body, str):
            return False
        body = event.body.strip()
        if not body.startswith("!") or not body[1:2].isalpha():
            return False
        spec = GROUP.find(body.split()[0])
        if spec is None:
            return False  # another room command (an aidant's !demande): not ours
        now = self.clock.now()
        if fold(spec.name) in (CONFIRM_COMMAND, CANCEL_COMMAND) and (
            self._pending_of(event.sender, now) is None
        ):
            return False  # the direct chat's own !confirmer (a form), if any
        found = await self._responsable_here(room_id, event.sender)
        if found is None:
            return False
        agent, group = found
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, room_id, now):
                return True
        reply = await self._run(body, agent, group, now)
        await self._post(room_id, event.sender, reply, txn=f"group-{event.event_id}")
        return True

    async def _run(self, body: str, agent: Agent, group: Group, now: datetime) -> Reply:
        parsed = GROUP.parse(body)
        if isinstance(parsed, NotACommand):
            return Reply.error("Commande illisible.")
        if isinstance(parsed, ParseFailure):
            return parsed.reply()
        sender = agent.matrix_id or ""
        pending = self._pending_of(sender, now)
        org = self.policies.current.organisations.get(group.organisation_id)
        ctx = GroupCtx(
            responsable=agent,
            group=group,
            organisation_kind=org.kind if org else OrganisationKind.OPERATEUR,
            ops=self.ops,
            now=now,
        )
        result: Reply | PendingConfirmation
        try:
            result = await GROUP.dispatch(parsed, ctx, pending=pending)
        except CommandFailed as failed:
            result = failure_reply(failed.reference, rolled_back=False)
        if parsed.settles_pending:
            self._pending.pop(sender, None)
        if parsed.spec.name == "aide" and not parsed.args.get("commande"):
            # The direct chat's own commands still work here (its help is hidden by ours).
            assert isinstance(result, Reply)
            result = Reply(
                result.text + ALSO_HERE,
                None if result.html is None else result.html + f"<p>{ALSO_HERE.strip()}</p>",
            )
        if isinstance(result, PendingConfirmation):
            self._pending[sender] = (result, now + self.confirmation)
            reply = result.summary
        else:
            reply = result
        name = parsed.spec.name
        if name != "aide":
            confirmed = name == CONFIRM_COMMAND and pending is not None
            async with self.store.transaction() as tx:
                await tx.audit(
                    "group_command",
                    actor=sender,
                    details={
                        "command": pending.parsed.spec.name if confirmed and pending else name,
                        "group": group.id,
                        "dry_run": parsed.dry_run or isinstance(result, PendingConfirmation),
                        "confirmed": confirmed,
                        "ok": not reply.is_error,
                    },
                    now=now,
                )
        return reply

    async def _post(self, room_id: str, user: str, reply: Reply, *, txn: str) -> None:
        contents = [mx.notice(reply.text, reply.html)]
        for attachment in reply.attachments:
            file = await self.gateway.upload_attachment(attachment.data, attachment.filename)
            contents.append(
                files.file_content(
                    file,
                    filename=attachment.filename,
                    mimetype=attachment.content_type,
                    size=len(attachment.data),
                )
            )
        async with self.store.transaction() as tx:
            for i, content in enumerate(contents):
                await self.sender.enqueue(
                    tx,
                    txn_id=txn if i == 0 else f"{txn}-file{i}",
                    room_id=room_id,
                    content=content,
                    recipients=[user],
                )
