"""The inactivity rule (pure): told at N months without activity, deactivated at N+1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.domain.inactivity import (
    ActivityFacts,
    InactivityRules,
    Step,
    add_months,
    case,
    due,
    upcoming,
    warning_text,
)
from bot.domain.model import Agent, Role

T0 = datetime(2026, 1, 31, 10, tzinfo=UTC)
RULES = InactivityRules(months=5)


def _facts(
    *, email_only: bool = False, bal: bool = False, warned: datetime | None = None
) -> ActivityFacts:
    agent = Agent(
        id=7,
        first_name="Jo",
        last_name="Test",
        email="jo@example.test",
        matrix_id=None if email_only else "@jo:hs",
        group_id=1,
        roles=frozenset({Role.INSTRUCTEUR}),
    )
    return ActivityFacts(agent, "CAF 95", bal, T0, warned)


def test_add_months_keeps_the_day_or_takes_the_last_of_a_shorter_month() -> None:
    assert add_months(T0, 1) == datetime(2026, 2, 28, 10, tzinfo=UTC)
    assert add_months(T0, 5) == datetime(2026, 6, 30, 10, tzinfo=UTC)
    assert add_months(T0, 12) == datetime(2027, 1, 31, 10, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 15, tzinfo=UTC), 3) == datetime(2027, 2, 15, tzinfo=UTC)


def test_warned_at_n_months_then_deactivated_at_n_plus_one() -> None:
    first = case(_facts(), RULES)
    assert first is not None and first.step is Step.WARN
    assert first.at == add_months(T0, 5) and first.deactivation_at == add_months(T0, 6)
    assert due([_facts()], first.at - timedelta(seconds=1), RULES) == []
    assert [c.step for c in due([_facts()], first.at, RULES)] == [Step.WARN]
    warned = _facts(warned=first.at)
    second = case(warned, RULES)
    assert second is not None and second.step is Step.DEACTIVATE
    assert second.at == add_months(T0, 6)
    assert due([warned], add_months(T0, 6) - timedelta(seconds=1), RULES) == []
    assert [c.step for c in due([warned], add_months(T0, 6), RULES)] == [Step.DEACTIVATE]


def test_a_late_warning_still_leaves_the_notice_period() -> None:
    late = add_months(T0, 6) + timedelta(days=3)  # the bot was stopped for a month
    c = case(_facts(warned=late), RULES)
    assert c is not None and c.at == late + timedelta(days=RULES.notice_days)


def test_off_and_the_email_only_agents_of_a_bal() -> None:
    assert case(_facts(), InactivityRules(months=0)) is None
    assert case(_facts(email_only=True, bal=True), RULES) is None
    assert case(_facts(email_only=True, bal=True), InactivityRules(5, email_only_bal=True))
    assert case(_facts(email_only=True), RULES) is not None  # no BAL: the rule applies
    assert case(_facts(bal=True), RULES) is not None  # a Matrix agent of a BAL group too


def test_upcoming_lists_the_warned_and_those_due_within_the_horizon() -> None:
    soon = add_months(T0, 5) - timedelta(days=10)
    assert [c.step for c in upcoming([_facts()], soon, RULES, days=30)] == [Step.WARN]
    assert upcoming([_facts()], soon, RULES, days=5) == []
    warned = _facts(warned=add_months(T0, 5))
    assert [c.step for c in upcoming([warned], soon, RULES, days=1)] == [Step.DEACTIVATE]


def test_the_warning_says_when_and_how_to_keep_the_account() -> None:
    c = case(_facts(), RULES)
    assert c is not None
    text = warning_text(c, last_day="31/01/2026", deactivation_day="31/07/2026")
    assert "31/01/2026" in text and "31/07/2026" in text and "!aide" in text
    mail = case(_facts(email_only=True), RULES)
    assert mail is not None
    assert "répondez à un courriel" in warning_text(mail, last_day="x", deactivation_day="y")
