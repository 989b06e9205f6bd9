"""The inactivity job: warn, then deactivate (decisions in `bot.domain.inactivity`).

The warning goes to the agent's private chat with the bot, or by email for email-only
agents (`AgentNotices`); the deactivation is the operators' one (`DirectoryAdmin`:
removed from their demandes, reply addresses revoked). Both are audited with the
agent's last activity. The operators are told in the admin room whom the job warned
and when they will be deactivated, and see what is coming with `!inactifs`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from bot.domain import inactivity as rules_mod
from bot.domain.calendar import PARIS
from bot.domain.inactivity import ActivityFacts, InactivityCase, InactivityRules, Step
from bot.services.clock import Clock
from bot.services.directory_admin import DirectoryAdmin
from bot.services.followup import AgentNotices
from bot.store.db import Store

log = logging.getLogger(__name__)

SUBJECT = "Votre compte Administration+ va être désactivé"


def _day(moment: datetime) -> str:
    return moment.astimezone(PARIS).strftime("%d/%m/%Y")


@dataclass(frozen=True, slots=True)
class InactivityReport:
    warned: int
    deactivated: int


class Inactivity:
    def __init__(
        self,
        *,
        store: Store,
        notices: AgentNotices,
        directory: DirectoryAdmin,
        clock: Clock,
        rules: InactivityRules,
        alert_operators: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.store = store
        self.notices = notices
        self.directory = directory
        self.clock = clock
        self.rules = rules
        self.alert_operators = alert_operators

    async def facts(self) -> list[ActivityFacts]:
        async with self.store.transaction() as tx:
            groups = {g.id: g for g in await tx.list_groups()}
            activity = await tx.last_activity()
            agents = await tx.list_agents()
        out = []
        for agent in agents:
            if agent.id not in activity:
                continue
            last, warned = activity[agent.id]
            group = groups.get(agent.group_id) if agent.group_id is not None else None
            out.append(
                ActivityFacts(
                    agent=agent,
                    group_name=group.name if group else None,
                    group_has_bal=bool(group and group.bal),
                    last_active_at=last,
                    warned_at=warned,
                )
            )
        return out

    async def upcoming(self, days: int) -> list[InactivityCase]:
        return rules_mod.upcoming(await self.facts(), self.clock.now(), self.rules, days=days)

    async def run(self, *, actor: str) -> InactivityReport:
        if not self.rules.enabled:
            return InactivityReport(0, 0)
        now = self.clock.now()
        warned = deactivated = 0
        told: list[str] = []
        for c in rules_mod.due(await self.facts(), now, self.rules):
            agent = c.facts.agent
            details = {"agent": agent.id, "last_active": c.facts.last_active_at.isoformat()}
            if c.step is Step.WARN:
                text = rules_mod.warning_text(
                    c,
                    last_day=_day(c.facts.last_active_at),
                    deactivation_day=_day(c.deactivation_at),
                )
                key = f"inactivity-{agent.id}-{c.facts.last_active_at.isoformat()}"
                sent = await self.notices.send(agent, SUBJECT, text, key=key)
                async with self.store.transaction() as tx:
                    await tx.mark_inactivity_warned(agent.id, c.facts.last_active_at, now)
                    await tx.audit(
                        "inactivity_warned",
                        actor=actor,
                        details={
                            **details,
                            "sent": sent,
                            "deactivation": c.deactivation_at.isoformat(),
                        },
                        now=now,
                    )
                warned += 1
                told.append(
                    f"  - n° {agent.id} {agent.display_name} : désactivation le "
                    f"{_day(c.deactivation_at)} sans activité d'ici là"
                )
            else:
                async with self.store.transaction() as tx:
                    _, still_warned = (await tx.last_activity()).get(agent.id, (now, None))
                if still_warned is None:
                    continue  # they acted since the facts were read
                left = await self.directory.deactivate(agent.id, actor=actor)
                async with self.store.transaction() as tx:
                    await tx.audit(
                        "inactivity_deactivated",
                        actor=actor,
                        details={**details, "demandes": len(left)},
                        now=now,
                    )
                deactivated += 1
        if told:
            await self.alert_operators(
                f"inactivity-{now.date().isoformat()}",
                "Agents sans activité prévenus aujourd'hui (!inactifs pour la liste) :\n"
                + "\n".join(told),
            )
        if warned or deactivated:
            log.info("inactivity: %d warned, %d deactivated", warned, deactivated)
        return InactivityReport(warned, deactivated)
