"""`!inactifs`: the operators see, before it happens, who the inactivity rule will warn
or deactivate (`bot.domain.inactivity`). Registered on the admin room's command set."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bot.commands.admin.context import ADMIN, SECTION_DIRECTORY, AdminCtx
from bot.commands.framework import Arg, CommandSpec, Reply
from bot.domain.calendar import PARIS
from bot.domain.inactivity import Step

UPCOMING_DAYS = 30


def _day(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(PARIS).strftime("%d/%m/%Y")


@ADMIN.command(
    CommandSpec(
        "inactifs",
        (Arg("jours", "int", "Horizon en jours (30 par défaut).", optional=True),),
        "Lister les agents sans activité qui vont être prévenus ou désactivés (prévenus à "
        "N mois sans activité, désactivés à N+1 mois s'ils n'agissent pas).",
        section=SECTION_DIRECTORY,
    )
)
async def _inactifs(ctx: AdminCtx, args: Mapping[str, Any], flags: frozenset[str]) -> Reply:
    days = int(args["jours"] or UPCOMING_DAYS)
    cases = await ctx.inactivity.upcoming(days)
    rows = [
        [
            str(c.facts.agent.id),
            c.facts.agent.display_name,
            c.facts.group_name or "—",
            _day(c.facts.last_active_at),
            _day(c.facts.warned_at) if c.step is Step.DEACTIVATE else f"le {_day(c.at)}",
            _day(c.deactivation_at),
        ]
        for c in cases
    ]
    headers = ("N°", "Nom", "Groupe", "Dernière activité", "Prévenu", "Désactivation")
    return Reply.table(
        headers, rows, title=f"Agents sans activité, dans les {days} jours ({len(rows)})"
    )
