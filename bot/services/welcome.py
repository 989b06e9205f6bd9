"""Greeting agents once when they arrive (added, imported, reactivated, or linked to the
Matrix account they made at their first sign-in).

An agent is greeted once per channel and per activation: with a Matrix ID in their
private chat with the bot (« Administration+ · suivi », the room of their follow-up
messages), email-only by email through the bridge. The row in `agent_welcomes` is
written in the same transaction as the message is queued, so a crash never greets
twice nor forgets. Agents in the directory before this feature count as greeted
(migration 0015). A deactivation forgets the welcomes: a reactivated agent is greeted
again. Audited (`agent_welcomed`, with the channel; no text).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from bot.domain.model import Agent
from bot.domain.welcome import EMAIL_SUBJECT, WelcomeFacts, email_welcome, matrix_welcome
from bot.matrix import content as mx
from bot.matrix.errors import MatrixError
from bot.ports import EmailHooks, Sender
from bot.services.clock import Clock
from bot.services.failures import homeserver_outage
from bot.services.followup import AgentNotices
from bot.store.db import Store
from bot.store.repository import Tx

log = logging.getLogger(__name__)


class Welcomes:
    def __init__(
        self,
        *,
        store: Store,
        notices: AgentNotices,
        sender: Sender,
        email: EmailHooks,
        clock: Clock,
        client_url: str | None,
        admin_room_name: str,
    ) -> None:
        self.store = store
        self.notices = notices
        self.sender = sender
        self.email = email
        self.clock = clock
        self.client_url = client_url
        self.admin_room_name = admin_room_name

    async def _facts(self, tx: Tx, agent: Agent) -> WelcomeFacts:
        group = await tx.get_group(agent.group_id) if agent.group_id is not None else None
        return WelcomeFacts(
            agent=agent,
            group_name=group.name if group else None,
            client_url=self.client_url,
            admin_room_name=self.admin_room_name,
        )

    async def greet(self, agent_ids: Iterable[int], *, actor: str) -> int:
        """Greet the agents not greeted yet on their channel; returns how many were."""
        greeted = 0
        for agent_id in dict.fromkeys(agent_ids):
            try:
                greeted += await self._greet_one(agent_id, actor=actor)
            except MatrixError as exc:
                if homeserver_outage(exc):
                    raise
                # Their chat could not be made (an account that refuses invites): the
                # welcome waits for the next change; the operators' command still works.
                log.warning("welcome of agent %d: %s %s", agent_id, exc.status, exc.errcode)
        return greeted

    async def _greet_one(self, agent_id: int, *, actor: str) -> bool:
        async with self.store.transaction() as tx:
            agent = await tx.get_agent(agent_id)
            if agent is None or not agent.active:
                return False
            channel = "email" if agent.email_only else "matrix"
            if channel == "email" and not self.email.enabled:
                return False  # no bridge: nothing could be sent, nothing is recorded
            if channel in await tx.welcomed_channels(agent.id):
                return False
            facts = await self._facts(tx, agent)
        if channel == "matrix":
            # Made outside the transaction (a homeserver call); kept, so made once.
            room_id = await self.notices.room_of(agent)
        now = self.clock.now()
        async with self.store.transaction() as tx:
            if not await tx.mark_welcomed(agent.id, channel, now):
                return False  # greeted meanwhile
            if channel == "matrix":
                assert agent.matrix_id is not None
                await self.sender.enqueue(
                    tx,
                    txn_id=f"welcome-{agent.id}-{now.isoformat()}",
                    room_id=room_id,
                    content=mx.to_act(matrix_welcome(facts), None, [agent.matrix_id]),
                    recipients=[agent.matrix_id],
                )
            else:
                await self.email.notify_agent(
                    tx,
                    agent,
                    EMAIL_SUBJECT,
                    email_welcome(facts),
                    key=f"welcome-{agent.id}-{int(now.timestamp())}",
                )
            # A new (or returning) agent's inactivity is counted from their welcome.
            await tx.touch_activity(agent.id, now)
            await tx.audit(
                "agent_welcomed",
                actor=actor,
                details={"agent": agent.id, "channel": channel},
                now=now,
            )
        return True
