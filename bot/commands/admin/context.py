"""The admin room's command set, the context every handler gets, and what the
sections share (sections, dates, tables, the demande filter)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.commands.framework import CommandSet, Reply
from bot.domain.calendar import PARIS, paris_date
from bot.domain.followup import FollowUpRules
from bot.domain.policies import MembershipRules, Policies
from bot.domain.stats import DemandeFilter, parse_filter
from bot.ports import (
    AttachmentFetcher,
    ChartRenderer,
    Clock,
    ConsoleTx,
    DirectoryChanges,
    FollowUpConsole,
    HealthConsole,
    IdentityDecisions,
    InactivityView,
    PoliciesRef,
    ReceivedFile,
    RetentionConsole,
    StatsCollector,
    Transactions,
)

SECTION_DIRECTORY = "Annuaire"
SECTION_DEMANDES = "Demandes (métadonnées)"
SECTION_POLICIES = "Politiques"
SECTION_FOLLOWUP = "Suivi"
SECTION_STATS = "Statistiques"
SECTION_RETENTION = "Conservation des données"
SECTION_HEALTH = "Santé du service"
FILTERS_HELP = (
    "filtres : statut=…, territoire=…, organisation=…, periode=2026-03 | 2026 | 30j, "
    "du=JJ/MM/AAAA, au=JJ/MM/AAAA, retard"
)


@dataclass(frozen=True)
class AdminCtx:
    """What an admin-room command may use, given by the admin wiring (`bot.admin_wiring`)
    as the capabilities of `bot.ports`, and who runs it."""

    store: Transactions[ConsoleTx]
    directory: DirectoryChanges
    sync_members: Callable[[], Awaitable[None]]  # the admin room follows the operators
    followup: FollowUpConsole
    retention: RetentionConsole
    health: HealthConsole
    identities: IdentityDecisions | None  # None: identities are not pinned
    collect_stats: StatsCollector
    render_chart: ChartRenderer
    clock: Clock
    rules: FollowUpRules
    policies_dir: Path
    load_policies: Callable[[Path], Policies]
    policies_ref: PoliciesRef
    membership: Callable[[], MembershipRules]  # with the bot's own homeserver
    fetch_attachment: AttachmentFetcher
    max_file_bytes: int
    sender: str
    event_id: str
    file: ReceivedFile | None
    inactivity: InactivityView

    @property
    def policies(self) -> Policies:
        return self.policies_ref.current


ADMIN: CommandSet[AdminCtx] = CommandSet()
Args = Mapping[str, Any]
Flags = frozenset[str]


def fmt_moment(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")


def table(title: str, headers: Sequence[str], rows: list[list[str]], **kw: Any) -> Reply:
    return Reply.table(headers, rows, title=title, **kw)


def demande_filter(ctx: AdminCtx, text: str | None) -> DemandeFilter:
    policies = ctx.policies

    def organisation(value: str) -> str | None:
        org = policies.find_organisation(value)
        return org.id if org else None

    def territoire(value: str) -> str | None:
        dep = policies.departement(value)
        return dep.code if dep else None

    return parse_filter(
        text,
        today=paris_date(ctx.clock.now()),
        find_organisation=organisation,
        known_territoire=territoire,
    )
