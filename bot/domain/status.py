"""Status transitions of a demande: nouvelle → en cours → traitée → clôturée.

`apply` is a pure function of the current status, its timestamps, an event and
`now`; it either returns the new state with a notice for the room, or refuses
with a French reason. Who may send which command is checked elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from bot.domain import dossier
from bot.domain.model import Status, StatusTimes, Usefulness


@dataclass(frozen=True, slots=True)
class InstructeurAnswer:
    """An instructeur wrote in the room or sent `!jemenoccupe`."""


@dataclass(frozen=True, slots=True)
class Treated:
    """`!traitee`."""


@dataclass(frozen=True, slots=True)
class Closed:
    """`!clore utile|nesaispas|inutile`."""

    usefulness: Usefulness


@dataclass(frozen=True, slots=True)
class Reopened:
    """`!rouvrir`."""


@dataclass(frozen=True, slots=True)
class AidantMessage:
    """The aidant (or a colleague of their group) wrote in the room."""


Event = InstructeurAnswer | Treated | Closed | Reopened | AidantMessage


@dataclass(frozen=True, slots=True)
class Transition:
    """The state after the event. `changed` covers the status and the timestamps;
    `notice` is set only when the status changed and the room should be told."""

    status: Status
    times: StatusTimes
    changed: bool
    notice: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """The event does not apply to the current status; nothing changes."""

    reason: str


def _answered(times: StatusTimes, now: datetime) -> StatusTimes:
    first = times.first_answer_at if times.first_answer_at is not None else now
    return replace(times, first_answer_at=first, last_answer_at=now)


def _reopened(times: StatusTimes, now: datetime) -> tuple[Status, StatusTimes]:
    # A reopened demande is no longer resolved: the resolution times of the
    # previous cycle are cleared so that the metric looks at the current one.
    status = Status.EN_COURS if times.first_answer_at is not None else Status.NOUVELLE
    return status, replace(times, treated_at=None, closed_at=None, reopened_at=now)


def _moved(status: Status, old: StatusTimes, new: StatusTimes, notice: str | None) -> Transition:
    return Transition(status=status, times=new, changed=new != old, notice=notice)


def apply(status: Status, times: StatusTimes, event: Event, now: datetime) -> Transition | Refusal:
    """What `event` does to a demande in `status`."""
    match event:
        case InstructeurAnswer():
            answered = _answered(times, now)
            if status is Status.NOUVELLE:
                return Transition(Status.EN_COURS, answered, True, dossier.NOTICE_EN_COURS)
            # Answering a traitée or clôturée demande keeps its status: only the
            # aidant decides that the answer was not enough.
            return _moved(status, times, answered, None)
        case Treated():
            if status is Status.TRAITEE:
                return Refusal(dossier.REFUSAL_ALREADY_TREATED)
            if status is Status.CLOTUREE:
                return Refusal(dossier.REFUSAL_TREAT_CLOSED)
            treated = replace(_answered(times, now), treated_at=now)
            return Transition(Status.TRAITEE, treated, True, dossier.NOTICE_TRAITEE)
        case Closed(usefulness=usefulness):
            if status is Status.CLOTUREE:
                return Refusal(dossier.REFUSAL_ALREADY_CLOSED)
            closed = replace(times, closed_at=now)
            return Transition(Status.CLOTUREE, closed, True, dossier.notice_closed(usefulness))
        case Reopened():
            if status in (Status.NOUVELLE, Status.EN_COURS):
                return Refusal(dossier.refusal_not_closed(status))
            new_status, reopened = _reopened(times, now)
            return Transition(new_status, reopened, True, dossier.notice_reopened(new_status))
        case AidantMessage():
            if status is not Status.CLOTUREE:
                return Transition(status, times, False, None)
            new_status, reopened = _reopened(times, now)
            return Transition(
                new_status, reopened, True, dossier.notice_reopened_by_message(new_status)
            )


def resolved_at(times: StatusTimes) -> datetime | None:
    """When the demande was resolved: marked traitée, or else clôturée."""
    candidates = [t for t in (times.treated_at, times.closed_at) if t is not None]
    return min(candidates) if candidates else None


def resolved_within(
    times: StatusTimes, days: int = 7, *, now: datetime | None = None
) -> bool | None:
    """The headline metric: resolved (traitée or clôturée) within `days` of creation.

    None while the demande is unresolved and the outcome is still open; with `now`,
    an unresolved demande whose deadline has passed is a definite False.
    """
    limit = times.created_at + timedelta(days=days)
    done = resolved_at(times)
    if done is not None:
        return done <= limit
    if now is not None and now > limit:
        return False
    return None
