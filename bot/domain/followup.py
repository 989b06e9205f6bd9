"""Follow-up of demandes: which are late, and which an aidant could close (pure).

Late (Administration+): no instructeur answer `first_answer_days` business
days after the opening, or `followup_days` business days after the last
instructeur answer. Only demandes waiting for an instructeur can be late:
nouvelle and en cours. A traitée demande waits for the aidant instead, and
the weekly digest reminds them that they could close it.

A late demande is reminded once per "episode": the episode is named by the
moment the delay started from, so a new answer that is again left without
follow-up starts a new episode and a new reminder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from bot.domain.calendar import PARIS, business_deadline
from bot.domain.model import Status, StatusTimes

WAITING_FOR_INSTRUCTEUR = frozenset({Status.NOUVELLE, Status.EN_COURS})


class LateKind(StrEnum):
    NO_FIRST_ANSWER = "sans_reponse"
    NO_FOLLOW_UP = "sans_suite"

    @property
    def label(self) -> str:
        if self is LateKind.NO_FIRST_ANSWER:
            return "sans première réponse"
        return "sans nouvelle réponse"


@dataclass(frozen=True, slots=True)
class FollowUpRules:
    first_answer_days: int = 3
    followup_days: int = 15
    digest_after_days: int = 10

    def __post_init__(self) -> None:
        if min(self.first_answer_days, self.followup_days, self.digest_after_days) < 1:
            raise ValueError("follow-up delays must be at least one day")


@dataclass(frozen=True, slots=True)
class Late:
    kind: LateKind
    since: datetime  # the opening or the last answer: names the episode
    deadline: datetime  # when the demande became late

    @property
    def episode(self) -> str:
        return f"{self.kind.value}:{self.since.isoformat()}"


def lateness(
    status: Status,
    times: StatusTimes,
    territoire: str,
    now: datetime,
    rules: FollowUpRules,
) -> Late | None:
    """Whether the demande is late at `now`, and why."""
    if status not in WAITING_FOR_INSTRUCTEUR:
        return None
    if times.first_answer_at is None:
        kind, since, days = LateKind.NO_FIRST_ANSWER, times.created_at, rules.first_answer_days
    else:
        last = times.last_answer_at or times.first_answer_at
        kind, since, days = LateKind.NO_FOLLOW_UP, last, rules.followup_days
    # A reopened demande starts a new cycle: the delay runs from the reopening.
    if times.reopened_at is not None and times.reopened_at > since:
        since = times.reopened_at
    deadline = business_deadline(since, days, territoire)
    return Late(kind, since, deadline) if now >= deadline else None


@dataclass(frozen=True, slots=True)
class DemandeFacts:
    """What the follow-up needs about a demande: metadata only."""

    reference: str
    territoire: str
    status: Status
    times: StatusTimes
    aidant_agent_id: int
    group_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reminder:
    demande: DemandeFacts
    late: Late


@dataclass(frozen=True, slots=True)
class ReminderReport:
    """What a round of reminders did."""

    reminders: list[Reminder]
    responsables_told: int
    emails: int


def reminders_due(
    demandes: Iterable[DemandeFacts],
    already_reminded: frozenset[tuple[str, str]],
    now: datetime,
    rules: FollowUpRules,
) -> list[Reminder]:
    """Late demandes whose current episode was not reminded yet ((reference, episode))."""
    due = []
    for d in demandes:
        late = lateness(d.status, d.times, d.territoire, now, rules)
        if late is not None and (d.reference, late.episode) not in already_reminded:
            due.append(Reminder(d, late))
    return sorted(due, key=lambda r: r.late.deadline)


def closable_by_aidant(
    demandes: Iterable[DemandeFacts], now: datetime, rules: FollowUpRules
) -> dict[int, list[DemandeFacts]]:
    """Aidant agent ID → open demandes last answered more than `digest_after_days` ago."""
    limit = now - timedelta(days=rules.digest_after_days)
    out: dict[int, list[DemandeFacts]] = {}
    for d in demandes:
        if d.status is Status.CLOTUREE or d.status is Status.NOUVELLE:
            continue
        answered = d.times.last_answer_at or d.times.treated_at
        if answered is not None and answered < limit:
            out.setdefault(d.aidant_agent_id, []).append(d)
    return {k: sorted(v, key=lambda d: d.reference) for k, v in sorted(out.items())}


def late_notice(reference: str, late: Late, business_days: int) -> str:
    """The reminder posted in the demande room (no personal data)."""
    since = late.since.astimezone(PARIS).strftime("%d/%m/%Y")
    if late.kind is LateKind.NO_FIRST_ANSWER:
        return (
            f"Relance : la demande {reference} attend une première réponse d'un instructeur "
            f"depuis le {since} (plus de {business_days} jours ouvrés). "
            "Un instructeur peut répondre, ou indiquer !jemenoccupe."
        )
    return (
        f"Relance : la demande {reference} n'a pas eu de nouvelle réponse d'un instructeur "
        f"depuis le {since} (plus de {business_days} jours ouvrés)."
    )
