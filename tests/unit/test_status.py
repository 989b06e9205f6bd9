"""Status transitions and the headline metric."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.domain.model import Status, StatusTimes, Usefulness
from bot.domain.status import (
    AidantMessage,
    Closed,
    Event,
    InstructeurAnswer,
    Refusal,
    Reopened,
    Transition,
    Treated,
    apply,
    resolved_within,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NEW = StatusTimes(created_at=T0)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def step(status: Status, times: StatusTimes, event: Event, hours: float) -> Transition:
    result = apply(status, times, event, at(hours))
    assert isinstance(result, Transition), result
    return result


def test_first_instructeur_answer_moves_to_en_cours_once() -> None:
    first = step(Status.NOUVELLE, NEW, InstructeurAnswer(), 2)
    assert first.status is Status.EN_COURS
    assert first.changed
    assert first.times.first_answer_at == at(2)
    assert first.times.last_answer_at == at(2)
    assert first.notice is not None and "en cours" in first.notice

    second = step(first.status, first.times, InstructeurAnswer(), 5)
    assert second.status is Status.EN_COURS
    assert second.times.first_answer_at == at(2)
    assert second.times.last_answer_at == at(5)
    assert second.changed  # the timestamps moved
    assert second.notice is None


def test_treated_then_closed() -> None:
    en_cours = step(Status.NOUVELLE, NEW, InstructeurAnswer(), 1)
    treated = step(en_cours.status, en_cours.times, Treated(), 20)
    assert treated.status is Status.TRAITEE
    assert treated.times.treated_at == at(20)
    assert treated.times.last_answer_at == at(20)
    assert treated.notice is not None and "!clore oui" in treated.notice

    closed = step(treated.status, treated.times, Closed(Usefulness.UTILE), 30)
    assert closed.status is Status.CLOTUREE
    assert closed.times.closed_at == at(30)
    assert closed.notice == "La demande est clôturée. Réponse utile pour l'usager : oui."


def test_treated_straight_from_nouvelle_counts_as_first_answer() -> None:
    treated = step(Status.NOUVELLE, NEW, Treated(), 3)
    assert treated.status is Status.TRAITEE
    assert treated.times.first_answer_at == at(3)


@pytest.mark.parametrize("status", [Status.NOUVELLE, Status.EN_COURS, Status.TRAITEE])
@pytest.mark.parametrize("usefulness", list(Usefulness))
def test_close_from_any_open_status(status: Status, usefulness: Usefulness) -> None:
    closed = step(status, NEW, Closed(usefulness), 1)
    assert closed.status is Status.CLOTUREE
    assert closed.changed


def test_refusals_change_nothing() -> None:
    closed_times = StatusTimes(created_at=T0, closed_at=at(1))
    assert apply(Status.CLOTUREE, closed_times, Closed(Usefulness.INUTILE), at(2)) == Refusal(
        "La demande est déjà clôturée."
    )
    refused = apply(Status.EN_COURS, NEW, Reopened(), at(2))
    assert isinstance(refused, Refusal)
    assert "n'est pas clôturée" in refused.reason
    assert "en cours" in refused.reason
    assert isinstance(apply(Status.NOUVELLE, NEW, Reopened(), at(2)), Refusal)
    refused = apply(Status.TRAITEE, NEW, Treated(), at(2))
    assert refused == Refusal("La demande est déjà marquée comme traitée.")
    refused = apply(Status.CLOTUREE, closed_times, Treated(), at(2))
    assert isinstance(refused, Refusal)
    assert "!rouvrir" in refused.reason


def test_reopen_goes_back_to_en_cours_if_answered_else_nouvelle() -> None:
    answered = StatusTimes(
        created_at=T0,
        first_answer_at=at(1),
        last_answer_at=at(1),
        treated_at=at(2),
        closed_at=at(3),
    )
    reopened = step(Status.CLOTUREE, answered, Reopened(), 10)
    assert reopened.status is Status.EN_COURS
    assert reopened.times.reopened_at == at(10)
    assert reopened.times.closed_at is None
    assert reopened.times.treated_at is None
    assert reopened.times.first_answer_at == at(1)

    never_answered = StatusTimes(created_at=T0, closed_at=at(3))
    assert step(Status.CLOTUREE, never_answered, Reopened(), 10).status is Status.NOUVELLE


def test_reopen_a_treated_demande() -> None:
    treated = step(Status.NOUVELLE, NEW, Treated(), 1)
    reopened = step(treated.status, treated.times, Reopened(), 5)
    assert reopened.status is Status.EN_COURS
    assert reopened.times.treated_at is None


def test_aidant_message_reopens_only_a_closed_demande() -> None:
    closed = StatusTimes(created_at=T0, first_answer_at=at(1), closed_at=at(3))
    reopened = step(Status.CLOTUREE, closed, AidantMessage(), 50)
    assert reopened.status is Status.EN_COURS
    assert reopened.notice is not None and "nouveau message de l'aidant" in reopened.notice

    for status in (Status.NOUVELLE, Status.EN_COURS, Status.TRAITEE):
        same = step(status, NEW, AidantMessage(), 50)
        assert same == Transition(status, NEW, changed=False, notice=None)


def test_instructeur_answer_on_closed_keeps_it_closed() -> None:
    closed = StatusTimes(created_at=T0, first_answer_at=at(1), closed_at=at(3))
    after = step(Status.CLOTUREE, closed, InstructeurAnswer(), 4)
    assert after.status is Status.CLOTUREE
    assert after.times.last_answer_at == at(4)
    assert after.notice is None


def test_resolved_within_seven_days() -> None:
    assert resolved_within(StatusTimes(created_at=T0, treated_at=at(24 * 7))) is True
    assert resolved_within(StatusTimes(created_at=T0, treated_at=at(24 * 7 + 1))) is False
    assert resolved_within(StatusTimes(created_at=T0, closed_at=at(24 * 3))) is True
    # Traitée on day 2, clôturée on day 20: resolved when it was traitée.
    assert resolved_within(StatusTimes(created_at=T0, treated_at=at(48), closed_at=at(480))) is True
    assert resolved_within(StatusTimes(created_at=T0, treated_at=at(48)), days=1) is False


def test_resolved_within_unknown_while_open() -> None:
    assert resolved_within(NEW) is None
    assert resolved_within(NEW, now=at(24 * 6)) is None
    assert resolved_within(NEW, now=at(24 * 7 + 1)) is False
