"""Gathers demandes metadata for statistics, listings and the export.

Reads metadata only (`Demande`, group names): never `load_form`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from bot.domain.followup import FollowUpRules, lateness
from bot.domain.model import Demande
from bot.domain.stats import DemandeStat, select
from bot.ports import ConsoleTx

__all__ = ["collect", "select", "to_stat"]


async def collect(tx: ConsoleTx, now: datetime, rules: FollowUpRules) -> list[DemandeStat]:
    groups = {g.id: g.name for g in await tx.list_groups()}
    agents_group: dict[int, str | None] = {}
    standard = await tx.procedure_standard_ids()
    out = []
    for d in await tx.list_demandes():
        if d.creation_step != "ready":
            continue
        if d.aidant_agent_id not in agents_group:
            agent = await tx.get_agent(d.aidant_agent_id)
            agents_group[d.aidant_agent_id] = (
                groups.get(agent.group_id) if agent and agent.group_id else None
            )
        stat = to_stat(d, now, rules, groups, agents_group[d.aidant_agent_id])
        out.append(replace(stat, procedure_standard=d.id in standard))
    return out


def to_stat(
    d: Demande,
    now: datetime,
    rules: FollowUpRules,
    groups: dict[int, str],
    aidant_group: str | None,
) -> DemandeStat:
    return DemandeStat(
        reference=d.reference,
        territoire=d.territoire,
        organisations=d.organisations,
        status=d.status,
        times=d.times,
        usefulness=d.usefulness,
        late=lateness(d.status, d.times, d.territoire, now, rules) is not None,
        aidant_group=aidant_group,
        target_groups=tuple(groups.get(g, str(g)) for g in d.group_ids),
    )
