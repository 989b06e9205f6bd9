"""Onboarding and the managers' roles in the admin room (registered on its command set):

- `!inactifs`: the operators see, before it happens, who the inactivity rule will warn
  or deactivate (`bot.domain.inactivity`);
- `!operateur-perimetre`: an operator is national, or territorial (a list of
  départements, `bot.domain.scope`); national operators set it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bot.commands.admin.context import ADMIN, SECTION_DIRECTORY, AdminCtx
from bot.commands.framework import Arg, CommandSpec, Reply
from bot.domain.calendar import PARIS
from bot.domain.inactivity import Step
from bot.domain.model import Role

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


@ADMIN.command(
    CommandSpec(
        "operateur-perimetre",
        (
            Arg("agent", "text", "L'opérateur : identifiant Matrix, adresse e-mail ou n°."),
            Arg("perimetre", "rest", "national, ou des codes de départements : 95,78"),
        ),
        "Donner à un opérateur un périmètre national, ou territorial (il ne voit et ne "
        "modifie que les demandes, groupes et agents de ses départements).",
        section=SECTION_DIRECTORY,
    )
)
async def _operateur_perimetre(
    ctx: AdminCtx, args: Mapping[str, Any], flags: frozenset[str]
) -> Reply:
    value = str(args["perimetre"]).strip()
    codes: set[str] | None = None
    if value.lower() != "national":
        codes = set()
        for code in re.split(r"[\s,;]+", value):
            if not code:
                continue
            dep = ctx.policies.departement(code)
            if dep is None:
                return Reply.error(f"Département inconnu « {code} » (voir !departements).")
            codes.add(dep.code)
        if not codes:
            return Reply.error("Indiquez national, ou au moins un département.")
    text = str(args["agent"]).strip()
    async with ctx.store.transaction() as tx:
        if text.startswith("@"):
            agent = await tx.get_agent_by_matrix_id(text)
        elif "@" in text:
            agent = await tx.get_agent_by_email(text)
        else:
            number = text.removeprefix("n°").strip()
            agent = await tx.get_agent(int(number)) if number.isdigit() else None
        if agent is None or not agent.has(Role.OPERATEUR):
            return Reply.error(f"« {text} » n'est pas un opérateur de l'annuaire.")
        await tx.set_operator_scope(agent.id, codes)
        label = "national" if codes is None else ",".join(sorted(codes))
        await tx.audit(
            "operator_scope_set",
            actor=ctx.sender,
            details={"agent": agent.id, "operator_scope": label},
            now=ctx.clock.now(),
        )
    where = "national" if codes is None else "départements " + ", ".join(sorted(codes))
    return Reply(f"Périmètre de {agent.display_name} : {where}.")
