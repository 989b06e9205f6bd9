"""The dossier as posted in a demande room, and how participants are shown in it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.domain.dossier import ParticipantView, render_dossier
from bot.domain.model import Agent, Demande, Group, Status
from bot.domain.policies import Policies
from bot.matrix import content as mx
from bot.ports import DemandeTx


def view_of(agent: Agent, group: Group | None, policies: Policies) -> ParticipantView:
    org = policies.organisations.get(group.organisation_id) if group else None
    return ParticipantView(
        display_name=agent.display_name,
        organisation_name=org.name if org else "",
        group_name=group.name if group else "",
        email_only=agent.email_only,
    )


async def participant_views(
    tx: DemandeTx, demande: Demande, policies: Policies
) -> tuple[list[ParticipantView], ParticipantView]:
    """The instructeurs (and invited agents) and the aidant of a demande, for display."""
    groups = {g.id: g for g in await tx.list_groups()}
    views: list[ParticipantView] = []
    aidant_view: ParticipantView | None = None
    for p in await tx.participants(demande.id):
        agent = await tx.get_agent(p.agent_id)
        if agent is None:
            continue
        view = view_of(agent, groups.get(agent.group_id) if agent.group_id else None, policies)
        if p.kind == "aidant":
            aidant_view = view
        else:
            views.append(view)
    if aidant_view is None:
        agent = await tx.get_agent(demande.aidant_agent_id)
        assert agent is not None
        aidant_view = view_of(agent, groups.get(agent.group_id or -1), policies)
    return views, aidant_view


async def dossier_content(
    tx: DemandeTx,
    demande: Demande,
    policies: Policies,
    *,
    status: Status,
    repost: bool,
    ask: Sequence[str] = (),
) -> dict[str, Any]:
    """The dossier's Matrix content (it holds the usager's data: encrypted rooms only).

    `ask`: who must act on it (the instructeurs of a new demande, a newcomer): only they
    are mentioned, although the dossier names every participant."""
    form = await tx.load_form(demande.id)
    views, aidant_view = await participant_views(tx, demande, policies)
    rendered = render_dossier(
        demande.reference,
        form,
        status,
        views,
        aidant_view,
        repost=repost,
        organisation_names={k: v.name for k, v in policies.organisations.items()},
    )
    content = mx.to_act(rendered.body, rendered.formatted_body, ask, dossier=demande.reference)
    content["msgtype"] = "m.text"  # the dossier reads as a message, even with nobody to ask
    return content
