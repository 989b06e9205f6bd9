"""When the bot asks for a missing key and when it tells the room (pure rules)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.domain.undecryptable import Pending, next_notice_due, notice_txn, steps

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WAIT = timedelta(seconds=300)


def test_a_new_event_gets_a_key_request_and_no_notice_yet() -> None:
    s = steps(Pending(T0, key_requested=False, notified=False), T0, WAIT)
    assert s.request_key and not s.post_notice


def test_the_notice_comes_once_the_wait_is_over() -> None:
    pending = Pending(T0, key_requested=True, notified=False)
    assert not steps(pending, T0 + WAIT - timedelta(seconds=1), WAIT).post_notice
    assert steps(pending, T0 + WAIT, WAIT).post_notice


def test_only_one_key_request_and_one_notice() -> None:
    s = steps(Pending(T0, key_requested=True, notified=True), T0 + 10 * WAIT, WAIT)
    assert not s.request_key and not s.post_notice


def test_next_due_is_the_earliest_unnotified() -> None:
    pendings = [
        Pending(T0 + timedelta(seconds=30), key_requested=True, notified=False),
        Pending(T0, key_requested=True, notified=True),
        Pending(T0 + timedelta(seconds=10), key_requested=False, notified=False),
    ]
    assert next_notice_due(pendings, WAIT) == T0 + timedelta(seconds=10) + WAIT
    assert next_notice_due([], WAIT) is None


def test_the_notice_transaction_id_is_stable_per_event() -> None:
    assert notice_txn("$abc") == notice_txn("$abc") != notice_txn("$abd")
