"""Inactivity, as Administration+ does it (pure): an agent with no activity for N months
is told, then deactivated at N+1 months unless they act.

Activity: a message or a command of theirs (Matrix or email), or their welcome (a new or
reactivated agent starts afresh). The deactivation comes at least `notice_days` after
the warning, so that an agent warned late (the bot was stopped) still has time to act.
Email-only agents of a group with a shared mailbox (BAL) are left out unless configured:
the BAL receives the group's demandes whoever reads it.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from bot.domain.model import Agent


@dataclass(frozen=True, slots=True)
class InactivityRules:
    months: int  # 0: off
    email_only_bal: bool = False
    notice_days: int = 7

    @property
    def enabled(self) -> bool:
        return self.months > 0


@dataclass(frozen=True, slots=True)
class ActivityFacts:
    agent: Agent
    group_name: str | None
    group_has_bal: bool
    last_active_at: datetime
    warned_at: datetime | None


class Step(StrEnum):
    WARN = "warn"
    DEACTIVATE = "deactivate"


@dataclass(frozen=True, slots=True)
class InactivityCase:
    facts: ActivityFacts
    step: Step  # the next one
    at: datetime  # when it is due
    deactivation_at: datetime


def add_months(moment: datetime, months: int) -> datetime:
    """The same day `months` later (the month's last day when it has fewer)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def applies(facts: ActivityFacts, rules: InactivityRules) -> bool:
    if not rules.enabled or not facts.agent.active:
        return False
    return not (facts.agent.email_only and facts.group_has_bal and not rules.email_only_bal)


def case(facts: ActivityFacts, rules: InactivityRules) -> InactivityCase | None:
    """The agent's next inactivity step and when it is due; None when none applies."""
    if not applies(facts, rules):
        return None
    warn_at = add_months(facts.last_active_at, rules.months)
    deactivate_at = add_months(facts.last_active_at, rules.months + 1)
    if facts.warned_at is None:
        deactivate_at = max(deactivate_at, warn_at + timedelta(days=rules.notice_days))
        return InactivityCase(facts, Step.WARN, warn_at, deactivate_at)
    deactivate_at = max(deactivate_at, facts.warned_at + timedelta(days=rules.notice_days))
    return InactivityCase(facts, Step.DEACTIVATE, deactivate_at, deactivate_at)


def due(items: list[ActivityFacts], now: datetime, rules: InactivityRules) -> list[InactivityCase]:
    found = (case(f, rules) for f in items)
    return sorted((c for c in found if c is not None and c.at <= now), key=lambda c: c.at)


def upcoming(
    items: list[ActivityFacts], now: datetime, rules: InactivityRules, *, days: int
) -> list[InactivityCase]:
    """Agents warned, or to be warned or deactivated within `days`: for the operators."""
    horizon = now + timedelta(days=days)
    found = (case(f, rules) for f in items)
    return sorted(
        (c for c in found if c is not None and (c.step is Step.DEACTIVATE or c.at <= horizon)),
        key=lambda c: c.deactivation_at,
    )


def warning_text(c: InactivityCase, *, last_day: str, deactivation_day: str) -> str:
    if c.facts.agent.email_only:
        act = (
            "Pour le garder, il suffit d'agir : répondez à un courriel d'une de vos demandes, "
            "ou demandez à votre responsable ou à l'équipe du service de le garder actif."
        )
    else:
        act = (
            "Pour le garder, il suffit d'agir : répondez à ce message (par exemple !aide), "
            "ou écrivez dans une de vos demandes."
        )
    return (
        f"Vous n'avez pas utilisé Administration+ depuis le {last_day}. Sans activité de "
        f"votre part, votre compte sera désactivé le {deactivation_day} : vous quitterez "
        f"vos demandes et vos adresses de réponse par courriel ne fonctionneront plus. {act}"
    )
