"""French public holidays, business days, late demandes, the weekly digest, job schedules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.domain import schedule
from bot.domain.calendar import (
    PARIS,
    add_business_days,
    business_days_between,
    business_deadline,
    easter_sunday,
    is_business_day,
    public_holidays,
)
from bot.domain.followup import (
    DemandeFacts,
    FollowUpRules,
    LateKind,
    closable_by_aidant,
    late_notice,
    lateness,
    reminders_due,
)
from bot.domain.model import Status, StatusTimes

RULES = FollowUpRules()


def paris(y: int, m: int, d: int, h: int = 10, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=PARIS).astimezone(UTC)


@pytest.mark.parametrize(
    ("year", "easter"),
    [(2024, date(2024, 3, 31)), (2025, date(2025, 4, 20)), (2026, date(2026, 4, 5)),
     (2027, date(2027, 3, 28)), (2038, date(2038, 4, 25)), (2285, date(2285, 3, 22))],
)  # fmt: skip
def test_easter(year: int, easter: date) -> None:
    assert easter_sunday(year) == easter


def test_holidays_of_2026() -> None:
    days = public_holidays(2026)
    assert len(days) == 11
    assert days[date(2026, 4, 6)] == "Lundi de Pâques"
    assert days[date(2026, 5, 14)] == "Ascension"
    assert days[date(2026, 5, 25)] == "Lundi de Pentecôte"
    assert date(2026, 7, 14) in days and date(2026, 12, 25) in days


def test_territorial_holidays() -> None:
    assert date(2026, 4, 3) in public_holidays(2026, "67")  # Good Friday, Alsace
    assert date(2026, 12, 26) in public_holidays(2026, "57")
    assert date(2026, 4, 3) not in public_holidays(2026, "75")
    assert date(2026, 12, 20) in public_holidays(2026, "974")
    assert date(2026, 5, 27) in public_holidays(2026, "971")


def test_business_days_skip_weekends_and_holidays() -> None:
    # Thursday 30 April 2026 + 1 → Friday 1 May is a holiday → Monday 4 May.
    assert add_business_days(date(2026, 4, 30), 1) == date(2026, 5, 4)
    # Friday 3 April + 1 → Monday 6 April is Easter Monday → Tuesday 7.
    assert add_business_days(date(2026, 4, 3), 1) == date(2026, 4, 7)
    assert not is_business_day(date(2026, 5, 8))
    assert is_business_day(date(2026, 5, 7))
    assert business_days_between(date(2026, 4, 30), date(2026, 5, 11)) == 5


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)), st.integers(0, 40))
def test_business_days_roundtrip(start: date, count: int) -> None:
    end = add_business_days(start, count)
    assert business_days_between(start, end) == count
    assert count == 0 or is_business_day(end)


def test_deadline_from_a_weekend_starts_monday_morning() -> None:
    saturday = paris(2026, 3, 7, 15)
    assert business_deadline(saturday, 3) == paris(2026, 3, 12, 0)  # Thursday 00:00
    wednesday = paris(2026, 3, 11, 9, 30)
    assert business_deadline(wednesday, 3) == paris(2026, 3, 16, 9, 30)  # Monday 9:30


def test_late_without_first_answer_across_easter() -> None:
    # Opened Thursday 2 April 2026, 10:00. Fri 3, [Sat, Sun, Easter Monday], Tue 7, Wed 8.
    opened = paris(2026, 4, 2)
    times = StatusTimes(created_at=opened)
    assert lateness(Status.NOUVELLE, times, "95", paris(2026, 4, 8, 9, 59), RULES) is None
    late = lateness(Status.NOUVELLE, times, "95", paris(2026, 4, 8, 10), RULES)
    assert late is not None and late.kind is LateKind.NO_FIRST_ANSWER
    assert late.deadline == paris(2026, 4, 8, 10)
    # In Alsace, Good Friday is off too: one more day.
    assert lateness(Status.NOUVELLE, times, "67", paris(2026, 4, 8, 10), RULES) is None
    # Answered: no longer late until 15 business days after the answer.
    answered = StatusTimes(created_at=opened, first_answer_at=paris(2026, 4, 3))
    assert lateness(Status.EN_COURS, answered, "95", paris(2026, 4, 8, 10), RULES) is None
    # 3 April + 15 business days: Easter Monday, 1 May (Friday) skipped → Monday 27 April.
    again = lateness(Status.EN_COURS, answered, "95", paris(2026, 4, 27, 10), RULES)
    assert again is not None and again.kind is LateKind.NO_FOLLOW_UP
    assert lateness(Status.EN_COURS, answered, "95", paris(2026, 4, 27, 9), RULES) is None
    # Treated or closed demandes wait for the aidant, not for an instructeur.
    assert lateness(Status.TRAITEE, times, "95", paris(2026, 6, 1), RULES) is None
    assert lateness(Status.CLOTUREE, times, "95", paris(2026, 6, 1), RULES) is None


def test_delays_are_configurable() -> None:
    rules = FollowUpRules(first_answer_days=1, followup_days=2)
    times = StatusTimes(created_at=paris(2026, 3, 6))  # Friday
    assert lateness(Status.NOUVELLE, times, "95", paris(2026, 3, 9, 10), rules) is not None
    with pytest.raises(ValueError):
        FollowUpRules(first_answer_days=0)


def _facts(ref: str, status: Status, times: StatusTimes, aidant: int = 1) -> DemandeFacts:
    return DemandeFacts(ref, "95", status, times, aidant, (7,))


def test_reminders_once_per_episode() -> None:
    times = StatusTimes(created_at=paris(2026, 3, 2))
    d = _facts("A-2026-000001", Status.NOUVELLE, times)
    now = paris(2026, 3, 10)
    due = reminders_due([d], frozenset(), now, RULES)
    assert len(due) == 1
    seen = frozenset({(d.reference, due[0].late.episode)})
    assert reminders_due([d], seen, now, RULES) == []
    # A later answer then silence: a new episode, a new reminder.
    answered = StatusTimes(
        created_at=times.created_at,
        first_answer_at=paris(2026, 3, 11),
        last_answer_at=paris(2026, 3, 12),
    )
    d2 = _facts(d.reference, Status.EN_COURS, answered)
    # Thursday 12 March + 15 business days → Thursday 2 April, 10:00.
    assert reminders_due([d2], seen, paris(2026, 4, 2, 9), RULES) == []
    later = reminders_due([d2], seen, paris(2026, 4, 2, 10), RULES)
    assert [r.late.kind for r in later] == [LateKind.NO_FOLLOW_UP]
    assert "A-2026-000001" in late_notice(d.reference, later[0].late, 15)


def test_digest_lists_answered_demandes_older_than_ten_days() -> None:
    now = paris(2026, 3, 30)
    old = StatusTimes(
        created_at=paris(2026, 3, 1),
        first_answer_at=paris(2026, 3, 2),
        last_answer_at=paris(2026, 3, 19),
    )
    recent = StatusTimes(
        created_at=paris(2026, 3, 1),
        first_answer_at=paris(2026, 3, 2),
        last_answer_at=paris(2026, 3, 25),
    )
    demandes = [
        _facts("A-1", Status.EN_COURS, old, aidant=1),
        _facts("A-2", Status.TRAITEE, old, aidant=1),
        _facts("A-3", Status.EN_COURS, recent, aidant=1),
        _facts("A-4", Status.CLOTUREE, old, aidant=2),
        _facts("A-5", Status.NOUVELLE, StatusTimes(created_at=paris(2026, 1, 1)), aidant=2),
        _facts("A-6", Status.EN_COURS, old, aidant=3),
    ]
    closable = closable_by_aidant(demandes, now, RULES)
    assert {k: [d.reference for d in v] for k, v in closable.items()} == {
        1: ["A-1", "A-2"],
        3: ["A-6"],
    }


@pytest.mark.parametrize(
    ("now", "occurrence"),
    [
        (paris(2026, 3, 10, 2), date(2026, 3, 9)),
        (paris(2026, 3, 10, 3), date(2026, 3, 10)),
    ],
)
def test_daily_occurrence(now: datetime, occurrence: date) -> None:
    assert schedule.latest_daily(now, 3) == occurrence


def test_weekly_occurrence_and_due() -> None:
    monday = 0
    # Sunday 15 March 2026 → the latest Monday 8:00 is 9 March.
    assert schedule.latest_weekly(paris(2026, 3, 15, 12), monday, 8) == date(2026, 3, 9)
    assert schedule.latest_weekly(paris(2026, 3, 16, 7), monday, 8) == date(2026, 3, 9)
    assert schedule.latest_weekly(paris(2026, 3, 16, 8), monday, 8) == date(2026, 3, 16)
    assert schedule.due(None, date(2026, 3, 16))
    assert not schedule.due(date(2026, 3, 16), date(2026, 3, 16))
    assert schedule.due(date(2026, 3, 9), date(2026, 3, 16))
    assert schedule.latest_daily(paris(2026, 3, 16) + timedelta(hours=20), 3) == date(2026, 3, 17)
