"""What the retention job must delete, and when (pure).

- usager data and mandates: N months after the demande was closed (default 6);
  the demande room is then emptied and purged from the homeserver;
- attachments: N days after they were posted (default 15), whatever the status;
- drafts never confirmed (they hold a filled form): N days after their last change;
- the audit trail: entries older than N days (default 365).

A reopened demande is no longer closed, so its clock restarts at the next closing.
The service carries the plan out; this module only decides.
"""

from __future__ import annotations

import calendar as _cal
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.domain.model import Status


@dataclass(frozen=True, slots=True)
class RetentionRules:
    usager_months: int = 6
    attachment_days: int = 15
    draft_days: int = 30
    audit_days: int = 365

    def __post_init__(self) -> None:
        if min(self.usager_months, self.attachment_days, self.draft_days, self.audit_days) < 1:
            raise ValueError("retention delays must be at least 1")


@dataclass(frozen=True, slots=True)
class RetainedDemande:
    reference: str
    status: Status
    closed_at: datetime | None
    room_id: str | None
    wiped: bool


@dataclass(frozen=True, slots=True)
class RetainedAttachment:
    reference: str
    room_id: str
    event_id: str
    mxc: str
    posted_at: datetime
    sender: str | None = None  # who posted it (a participant or the bot), when recorded


def may_delete_media(
    *,
    uploader: str | None,
    bot_user_id: str,
    participants: Iterable[str],
    other_references: Iterable[str],
) -> str | None:
    """Why the media of an attachment must be kept (None: it may be deleted).

    The retention job deletes with the server's admin token: only media that belong to
    the demande may go — uploaded by the bot or by one of its participants, and named by
    no other demande. Anything else (another user's avatar named in a file message, a
    file of another room) stays.
    """
    if uploader is None:
        return "not_local"
    if uploader != bot_user_id and uploader not in set(participants):
        return "not_uploaded_by_a_participant"
    if any(True for _ in other_references):
        return "referenced_elsewhere"
    return None


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    wipe: tuple[RetainedDemande, ...]
    attachments: tuple[RetainedAttachment, ...]
    drafts_before: datetime
    audit_before: datetime

    @property
    def empty(self) -> bool:
        return not self.wipe and not self.attachments


@dataclass
class RetentionReport:
    """What a run of the retention job did (filled in as it goes)."""

    wiped: list[str] = field(default_factory=list)
    rooms_purged: list[str] = field(default_factory=list)
    rooms_waiting: list[str] = field(default_factory=list)
    attachments_deleted: int = 0
    attachments_waiting: int = 0
    drafts_wiped: int = 0
    outbox_blanked: int = 0
    audit_purged: int = 0
    problems: list[str] = field(default_factory=list)


def add_months(moment: datetime, months: int) -> datetime:
    """Same day `months` later, clamped to the month's end (31 August + 6 → 28/29 February)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, _cal.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def wipe_due_at(d: RetainedDemande, rules: RetentionRules) -> datetime | None:
    if d.status is not Status.CLOTUREE or d.closed_at is None:
        return None
    return add_months(d.closed_at, rules.usager_months)


def plan(
    demandes: Iterable[RetainedDemande],
    attachments: Iterable[RetainedAttachment],
    now: datetime,
    rules: RetentionRules,
) -> RetentionPlan:
    wipe = []
    for d in demandes:
        due = wipe_due_at(d, rules)
        if not d.wiped and due is not None and due <= now:
            wipe.append(d)
    wiped_refs = {d.reference for d in wipe}
    limit = now - timedelta(days=rules.attachment_days)
    old_files = tuple(a for a in attachments if a.posted_at <= limit or a.reference in wiped_refs)
    return RetentionPlan(
        wipe=tuple(sorted(wipe, key=lambda d: d.reference)),
        attachments=tuple(sorted(old_files, key=lambda a: (a.posted_at, a.event_id))),
        drafts_before=now - timedelta(days=rules.draft_days),
        audit_before=now - timedelta(days=rules.audit_days),
    )
