"""Typed ports: what crosses a feature line, and nothing else.

This module imports only the domain. Everything that one feature offers another goes
through one of these interfaces, given at construction by the composition root
(`bot.app`): the email hooks (with `NoEmail` when the bridge is off), the ledger,
status changes, the outbox seen from a feature, the current policies, and the narrow
transaction interfaces commands and hooks may use.

Transactions: `DemandeTx` is what a room command or a hook may read and write inside
the caller's transaction; `MailTx` adds what the email bridge queues; `ConsoleTx` is
what an admin-room command reads and writes. The store's `Tx` satisfies each of them
(mypy checks it where a `Tx` or the `Store` is passed).

The admin console (`bot.commands.admin`) reaches the services through the capabilities
of its last section (directory changes, follow-up, retention, health, identities), so
that the commands import no service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from bot.domain import status as status_rules
from bot.domain.directory_csv import DirectoryImport
from bot.domain.directory_import import ImportOutcome, ImportPlan
from bot.domain.followup import DemandeFacts, FollowUpRules, Late, Reminder, ReminderReport
from bot.domain.inactivity import InactivityCase
from bot.domain.metrics import CheckResult, MetricsSnapshot
from bot.domain.model import (
    Agent,
    Demande,
    DemandeForm,
    Group,
    Participant,
    Role,
    Status,
    StatusTimes,
    Usefulness,
)
from bot.domain.policies import Policies
from bot.domain.retention import RetentionPlan, RetentionReport, RetentionRules
from bot.domain.stats import DemandeStat, Stats

Via = Literal["matrix", "email"]


@dataclass(frozen=True, slots=True)
class Author:
    """Who wrote a participant's message, and how it reached the bot.

    One type for both channels, so that nothing has to guess whether an actor is a
    Matrix ID or an email address.
    """

    agent: Agent
    via: Via

    @property
    def address(self) -> str:
        """The identifier recorded as the actor of the audit trail."""
        if self.via == "matrix" and self.agent.matrix_id:
            return self.agent.matrix_id
        return self.agent.email or f"agent:{self.agent.id}"

    @property
    def label(self) -> str:
        suffix = " (par courriel)" if self.via == "email" else ""
        return self.agent.display_name + suffix


# --------------------------------------------------------------------------- transactions


class DemandeTx(Protocol):
    """The part of a transaction a room command, a status change or a hook uses."""

    async def get_agent(self, agent_id: int) -> Agent | None: ...
    async def get_agent_by_matrix_id(self, matrix_id: str) -> Agent | None: ...
    async def get_agent_by_email(self, email: str) -> Agent | None: ...
    async def list_agents(self, *, active_only: bool = True) -> list[Agent]: ...
    async def agents_of_group(self, group_id: int, *, active_only: bool = True) -> list[Agent]: ...
    async def get_group(self, group_id: int) -> Group | None: ...
    async def get_group_by_name(self, name: str) -> Group | None: ...
    async def list_groups(self) -> list[Group]: ...
    async def get_demande(self, demande_id: int) -> Demande | None: ...
    async def demandes_of_agent(self, agent_id: int) -> list[Demande]: ...
    async def participants(
        self, demande_id: int, *, active_only: bool = True
    ) -> list[Participant]: ...
    async def add_participant(
        self, *, demande_id: int, agent: Agent, kind: str, added_by: str, now: datetime
    ) -> bool: ...
    async def update_status(
        self,
        demande_id: int,
        status: Status,
        times: StatusTimes,
        *,
        usefulness: Usefulness | None = None,
    ) -> None: ...
    async def load_form(self, demande_id: int) -> DemandeForm: ...
    async def update_form(self, demande_id: int, form: DemandeForm) -> None: ...
    async def set_procedure_standard(
        self, demande_id: int, flagged: bool, *, by: str, now: datetime
    ) -> bool: ...
    async def audit(
        self,
        action: str,
        *,
        actor: str,
        reference: str | None = None,
        details: Mapping[str, Any] | None = None,
        now: datetime,
    ) -> None: ...
    async def enqueue_message(
        self, *, txn_id: str, room_id: str, content: dict[str, Any], now: datetime
    ) -> bool: ...
    async def add_pending_invite(self, room_id: str, user_id: str, now: datetime) -> None: ...
    async def set_email_notifications(self, agent_id: int, notify: bool, now: datetime) -> None: ...
    async def set_demande_muted(
        self, demande_id: int, agent_id: int, muted: bool, now: datetime
    ) -> None: ...
    async def set_email_digest(self, agent_id: int, hour: int | None, now: datetime) -> None: ...
    def after_commit(self, callback: Callable[[], None]) -> None: ...
    def savepoint(self) -> AbstractAsyncContextManager[None]: ...


class SentEmail(Protocol):
    """An email already queued, as the bridge needs to know it again."""

    @property
    def kind(self) -> str: ...
    @property
    def author(self) -> str | None: ...
    @property
    def recipient(self) -> str: ...


class MailTx(DemandeTx, Protocol):
    """What the email bridge adds to a transaction: reply tokens, the email outbox."""

    async def reply_token_generation(self, demande_id: int, agent_email: str) -> int | None: ...
    async def last_reply_token_generation(self, demande_id: int, agent_email: str) -> int: ...
    async def add_reply_token(
        self, *, digest: str, demande_id: int, agent_email: str, generation: int, now: datetime
    ) -> None: ...
    async def agents_notified_by_email(self, agent_ids: Iterable[int]) -> set[int]: ...
    async def muted_agents(self, demande_id: int) -> set[int]: ...
    async def email_digest_hours(
        self, agent_ids: Iterable[int] | None = None
    ) -> dict[int, int]: ...
    async def add_digest_item(
        self, *, agent_id: int, demande_id: int, event_key: str, body: bytes, now: datetime
    ) -> bool: ...
    async def drop_digest_items(self, event_key: str) -> int: ...
    async def enqueue_email(
        self,
        *,
        event_key: str,
        recipient: str,
        kind: str,
        demande_id: int | None,
        author: str | None,
        message_id: str,
        envelope_from: str,
        message: bytes,
        now: datetime,
    ) -> bool: ...
    async def emails_of_event(self, event_key: str) -> Sequence[SentEmail]: ...


TxT_co = TypeVar("TxT_co", covariant=True)


class Transactions(Protocol[TxT_co]):
    """Opens a transaction (the store), seen through the slice its holder uses."""

    def transaction(self) -> AbstractAsyncContextManager[TxT_co]: ...


class Clock(Protocol):
    """The wall clock (`bot.services.clock.SystemClock`); tests give their own."""

    def now(self) -> datetime: ...


# --------------------------------------------------------------------------- email


class AttachmentError(ValueError):
    """An attachment that cannot be used; `str()` is a French message fit for the room."""


class AttachmentFetcher(Protocol):
    """Downloads and decrypts a Matrix file (the gateway): (filename, mimetype, bytes).
    Raises `AttachmentError` when the file cannot be used."""

    def __call__(
        self, content: Mapping[str, Any], *, max_bytes: int | None = None
    ) -> Awaitable[tuple[str, str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class FileAttachment:
    filename: str
    content_type: str
    data: bytes


class EmailHooks(Protocol):
    """What the Matrix side tells the email bridge, inside the transaction of the event
    that caused it (so an email is queued exactly when the change commits)."""

    @property
    def enabled(self) -> bool: ...

    async def demande_ready(self, tx: MailTx, demande: Demande) -> None: ...

    async def participants_added(
        self, tx: MailTx, demande: Demande, agents: Sequence[Agent], *, key: str
    ) -> None: ...

    async def room_message(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        event_key: str,
        author: Agent | None,
        author_id: str,
        content: Mapping[str, Any],
        attachments: Sequence[FileAttachment] = (),
    ) -> None: ...

    async def status_changed(
        self, tx: MailTx, demande: Demande, *, old: Status, new: Status, actor: str, key: str
    ) -> None: ...

    async def redaction(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        redacted_event_id: str,
        redaction_event_id: str,
        sender: str,
    ) -> None: ...

    async def command_answered(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        author: Author,
        command: str,
        text: str,
        error: bool,
        key: str,
    ) -> None:
        """A participant's command was answered in the room (`command`: its name, "?" when
        it could not be read; `text`: the answer). The author gets it by email if the
        command came by email; the email-only colleagues learn what it did."""
        ...

    async def participant_removed(
        self, tx: MailTx, demande: Demande, agent: Agent, *, why: str, key: str
    ) -> None:
        """A participant left the demande (`why`: French, e.g. « compte désactivé »):
        the email-only participants are told."""
        ...

    async def room_file(
        self, demande: Demande, *, event_id: str, author: Agent, content: Mapping[str, Any]
    ) -> None:
        """A participant's file: fetched (outside any transaction), then queued by email to
        the email-only participants in a transaction of its own, once."""
        ...

    async def notify_agent(
        self, tx: MailTx, agent: Agent, subject: str, text: str, *, key: str
    ) -> bool:
        """A message for one email-only agent (a reminder, the digest): True if queued."""
        ...


class NoEmail:
    """The email bridge is off: every hook does nothing, and says so where asked."""

    @property
    def enabled(self) -> bool:
        return False

    async def demande_ready(self, tx: MailTx, demande: Demande) -> None:
        return None

    async def participants_added(
        self, tx: MailTx, demande: Demande, agents: Sequence[Agent], *, key: str
    ) -> None:
        return None

    async def room_message(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        event_key: str,
        author: Agent | None,
        author_id: str,
        content: Mapping[str, Any],
        attachments: Sequence[FileAttachment] = (),
    ) -> None:
        return None

    async def status_changed(
        self, tx: MailTx, demande: Demande, *, old: Status, new: Status, actor: str, key: str
    ) -> None:
        return None

    async def redaction(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        redacted_event_id: str,
        redaction_event_id: str,
        sender: str,
    ) -> None:
        return None

    async def command_answered(
        self,
        tx: MailTx,
        demande: Demande,
        *,
        author: Author,
        command: str,
        text: str,
        error: bool,
        key: str,
    ) -> None:
        return None

    async def participant_removed(
        self, tx: MailTx, demande: Demande, agent: Agent, *, why: str, key: str
    ) -> None:
        return None

    async def room_file(
        self, demande: Demande, *, event_id: str, author: Agent, content: Mapping[str, Any]
    ) -> None:
        return None

    async def notify_agent(
        self, tx: MailTx, agent: Agent, subject: str, text: str, *, key: str
    ) -> bool:
        return False


# --------------------------------------------------------------------------- demandes


class Ledger(Protocol):
    """Who may be in a demande room: the committed ledger, read only."""

    async def authorised(self, room_id: str) -> set[str] | None:
        """Matrix IDs of the room's participants and the bot; None if not a demande room."""
        ...


class StatusChanger(Protocol):
    async def apply(
        self,
        tx: MailTx,
        demande: Demande,
        event: status_rules.Event,
        *,
        actor: str,
        txn: str,
        announce: bool,
        usefulness: Usefulness | None = None,
    ) -> status_rules.Transition | status_rules.Refusal:
        """Apply a status event in `tx`; `announce` posts the status notice in the room."""
        ...


class Sender(Protocol):
    """The outbox seen from a feature: a message is queued in the transaction of the
    change that caused it, and sent after the commit by the outbox's worker."""

    async def enqueue(
        self,
        tx: DemandeTx,
        *,
        txn_id: str,
        room_id: str,
        content: Mapping[str, Any],
        recipients: Collection[str] | None = None,
        encrypted: bool = True,
        hold: bool = False,
        event_type: str = "m.room.message",
    ) -> bool:
        """Queue a message (``recipients`` None: the demande room's ledger); True if new.

        ``hold``: not sent when the transaction commits, but at the caller's next
        `flush_soon` for the room (or after a restart), e.g. a reply that must follow
        work done after the commit."""
        ...

    def flush_soon(self, room_id: str | None = None) -> None: ...


class InactivityView(Protocol):
    """What the operators see of the inactivity rule before it acts."""

    async def upcoming(self, days: int) -> Sequence[InactivityCase]:
        """Agents warned, or to be warned or deactivated within `days`."""
        ...


class GroupOps(Protocol):
    """What a group's responsable may see and do, for their own group only: the
    group's demandes (metadata), its agents, adding and deactivating one of them."""

    async def demandes(self, group: Group) -> Sequence[DemandeStat]: ...
    async def agents(self, group: Group) -> Sequence[Agent]: ...
    def chart(self, stats: Stats, title: str) -> bytes: ...
    def homeserver_allowed(self, server: str) -> bool: ...
    async def find_agent(self, text: str) -> Agent | None:
        """By Matrix ID, email or number, whatever their group."""
        ...

    async def add_agent(
        self,
        group: Group,
        *,
        first_name: str,
        last_name: str,
        roles: frozenset[Role],
        matrix_id: str | None,
        email: str | None,
        actor: str,
    ) -> Agent | str:
        """The new agent (audited, joined to the group's demandes, greeted), or why not."""
        ...

    async def departures(self, agent: Agent) -> Sequence[str]:
        """References of the demandes the agent would leave."""
        ...

    async def deactivate(self, agent: Agent, *, actor: str) -> Sequence[str]: ...
    async def exported(self, group: Group, count: int, *, actor: str) -> None:
        """Audit an export of the group's demandes."""
        ...


class PoliciesRef:
    """The policies in force, shared by every holder: `!politiques-recharger` replaces
    them in one place (one event loop: no reader ever sees half of a change)."""

    def __init__(self, policies: Policies) -> None:
        self._current = policies

    @property
    def current(self) -> Policies:
        return self._current

    def replace(self, policies: Policies) -> None:
        self._current = policies


# --------------------------------------------------------------------------- admin console


class AuditRecord(Protocol):
    """One entry of the audit trail, as the console shows it."""

    @property
    def at(self) -> datetime: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def reference(self) -> str | None: ...
    @property
    def details(self) -> Mapping[str, Any]: ...


class ConsoleTx(Protocol):
    """What an admin-room command reads and writes: the directory, demandes' metadata
    and the audit trail (never a usager's data)."""

    async def get_agent(self, agent_id: int) -> Agent | None: ...
    async def get_agent_by_matrix_id(self, matrix_id: str) -> Agent | None: ...
    async def get_agent_by_email(self, email: str) -> Agent | None: ...
    async def list_agents(self, *, active_only: bool = True) -> list[Agent]: ...
    async def upsert_agent(
        self,
        *,
        first_name: str,
        last_name: str,
        email: str | None,
        matrix_id: str | None,
        group_id: int | None,
        roles: frozenset[Role],
        active: bool = True,
    ) -> tuple[Agent, bool]: ...
    async def update_agent(self, agent: Agent) -> Agent: ...
    async def set_agent_active(self, agent_id: int, active: bool) -> None: ...
    async def set_email_digest(self, agent_id: int, hour: int | None, now: datetime) -> None: ...
    async def get_group_by_name(self, name: str) -> Group | None: ...
    async def list_groups(self) -> list[Group]: ...
    async def agent_counts_by_group(self) -> dict[int, int]: ...
    async def upsert_group(
        self, *, name: str, organisation_id: str, departements: frozenset[str], bal: str | None
    ) -> Group: ...
    async def update_group(
        self,
        group_id: int,
        *,
        name: str,
        organisation_id: str,
        departements: frozenset[str],
        bal: str | None,
    ) -> None: ...
    async def get_demande_by_reference(self, reference: str) -> Demande | None: ...
    async def list_demandes(self, *, status: Status | None = None) -> list[Demande]: ...
    async def procedure_standard_ids(self) -> set[int]: ...
    async def demandes_of_agent(self, agent_id: int) -> list[Demande]: ...
    async def participants(
        self, demande_id: int, *, active_only: bool = True
    ) -> list[Participant]: ...
    async def audit(
        self,
        action: str,
        *,
        actor: str,
        reference: str | None = None,
        details: Mapping[str, Any] | None = None,
        now: datetime,
    ) -> None: ...
    async def audit_entries(
        self, *, reference: str | None = None, action: str | None = None
    ) -> Sequence[AuditRecord]: ...
    async def set_operator_scope(
        self, agent_id: int, departements: Iterable[str] | None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Departure:
    """A demande an agent leaves when deactivated."""

    reference: str
    room_id: str | None


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """The last file an operator attached: kept in memory only, never in the database."""

    event_id: str
    content: Mapping[str, Any]
    filename: str
    at: datetime


class DirectoryChanges(Protocol):
    """What a directory change does to the rooms (`bot.services.directory_admin`)."""

    async def join_group_demandes(self, agent_ids: list[int], *, actor: str) -> list[str]:
        """Active instructeurs join their group's open demandes; the references joined."""
        ...

    async def departures(self, tx: ConsoleTx, agent: Agent) -> Sequence[Departure]: ...

    async def deactivate(self, agent_id: int, *, actor: str) -> Sequence[Departure]:
        """Deactivate, leave every demande (ledger, tokens, kick); the demandes left."""
        ...

    async def preview_import(
        self, parsed: DirectoryImport, *, actor: str, file: str | None = None
    ) -> ImportPlan:
        """What a CSV import would do, line by line, under the ledger rules (a refused
        plan is audited)."""
        ...

    async def import_directory(
        self, parsed: DirectoryImport, *, actor: str, file: str | None = None
    ) -> ImportOutcome:
        """All or nothing, checked again; raises `ImportRefused` (audited). Then the active
        instructeurs join their group's open demandes, the admin room its operators."""
        ...


class StatsCollector(Protocol):
    """The metadata of every open or closed demande, for listings and statistics."""

    def __call__(
        self, tx: ConsoleTx, now: datetime, rules: FollowUpRules
    ) -> Awaitable[list[DemandeStat]]: ...


ChartRenderer = Callable[[Stats, str], bytes]
"""Statistics and a title → a PNG chart."""


class FollowUpConsole(Protocol):
    """Late demandes, reminders and the weekly digest (`bot.services.followup`)."""

    async def late_now(self) -> list[tuple[Demande, Late]]: ...
    async def due(self) -> list[Reminder]: ...
    async def remind(self, *, actor: str) -> ReminderReport: ...
    async def digest_plan(self) -> dict[int, list[DemandeFacts]]: ...
    async def send_digest(self, *, actor: str) -> int: ...


class RetentionConsole(Protocol):
    """The retention job (`bot.services.retention`)."""

    @property
    def rules(self) -> RetentionRules: ...
    @property
    def purge_configured(self) -> bool:
        """Whether the homeserver may be asked to purge rooms and media (admin token)."""
        ...

    async def plan(self) -> RetentionPlan: ...
    async def rooms_waiting(self) -> list[str]: ...
    async def run(self, *, actor: str) -> RetentionReport: ...


class HealthConsole(Protocol):
    """The state of the service's components (`bot.services.health`)."""

    async def checks(self) -> dict[str, CheckResult]: ...
    async def snapshot(self) -> MetricsSnapshot: ...


ACCEPT_IDENTITY_COMMAND = "identite-accepter"
"""The admin-room command that accepts a participant's new cross-signing identity
(named in the notices that tell operators about the change)."""


class IdentityDecisions(Protocol):
    """Operators' decisions about participants' cross-signing identities."""

    async def accept(self, user_id: str, *, actor: str) -> bool:
        """The pending identity becomes the pinned one and the participant's devices get
        the keys they missed; False when no change was pending."""
        ...
