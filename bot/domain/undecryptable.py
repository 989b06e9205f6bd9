"""What to do about a message the bot cannot decrypt yet, and when.

Pure: the service gives the facts (when it arrived, what was already done) and
the current time. A message is never dropped: it stays pending until its key
arrives, whatever happened before (a notice does not end the wait).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

NOTICE_TEXT = "Un message n'a pas pu être déchiffré par le service ; merci de le renvoyer."


@dataclass(frozen=True, slots=True)
class Pending:
    received_at: datetime
    key_requested: bool
    notified: bool


@dataclass(frozen=True, slots=True)
class Steps:
    request_key: bool
    post_notice: bool


def steps(pending: Pending, now: datetime, notice_after: timedelta) -> Steps:
    """Ask the sender's devices for the key once; one notice once the wait is over."""
    return Steps(
        request_key=not pending.key_requested,
        post_notice=not pending.notified and now - pending.received_at >= notice_after,
    )


def next_notice_due(pendings: Iterable[Pending], notice_after: timedelta) -> datetime | None:
    """When the earliest notice still to post falls due (None: nothing to wait for)."""
    due = [p.received_at + notice_after for p in pendings if not p.notified]
    return min(due) if due else None


def notice_txn(event_id: str) -> str:
    """One notice per event, whatever the retries and restarts."""
    return f"undecryptable-{event_id}"
