"""Commands of a responsable's follow-up room (« Administration+ · suivi »): their
group's demandes, statistics and export, adding and deactivating an agent of their
group. Same rules, confirmation and audit as the operators' commands, limited to the
responsable's own group (so to its organisation and départements).

A leaf: declarations, a small context, one handler each; the work is done behind the
`GroupOps` port. Metadata only: nothing here reads a usager's data.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.commands.framework import Arg, Attachment, CommandSet, CommandSpec, Reply, render_table
from bot.domain.agent_entry import parse_contacts, parse_roles
from bot.domain.calendar import PARIS
from bot.domain.model import Agent, Group, OrganisationKind, Role, Status
from bot.domain.stats import DemandeFilter, DemandeStat, compute, export_csv, stats_rows
from bot.ports import GroupOps

SECTION = "Mon groupe"
LIST_LIMIT = 30
RECENT_DAYS = 30


@dataclass(frozen=True)
class GroupCtx:
    responsable: Agent
    group: Group
    organisation_kind: OrganisationKind
    ops: GroupOps
    now: datetime

    @property
    def actor(self) -> str:
        return self.responsable.matrix_id or f"agent:{self.responsable.id}"

    @property
    def allowed_roles(self) -> frozenset[Role]:
        """The roles a responsable may give: their organisation's, never operator."""
        if self.organisation_kind is OrganisationKind.AIDANT:
            return frozenset({Role.AIDANT, Role.RESPONSABLE})
        return frozenset({Role.INSTRUCTEUR, Role.RESPONSABLE})


GROUP: CommandSet[GroupCtx] = CommandSet()
Args = Mapping[str, Any]
Flags = frozenset[str]


def _day(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(PARIS).strftime("%d/%m/%Y")


def _rows(items: Sequence[DemandeStat], *, closed: bool = False) -> list[list[str]]:
    rows = []
    for d in items[:LIST_LIMIT]:
        last = d.times.closed_at if closed else d.times.last_answer_at
        rows.append(
            [d.reference, d.territoire, d.status.label, _day(d.times.created_at), _day(last)]
        )
    if len(items) > LIST_LIMIT:
        rows.append([f"… et {len(items) - LIST_LIMIT} autre(s) : voir l'export", "", "", "", ""])
    return rows


@GROUP.command(
    CommandSpec(
        "mongroupe",
        (),
        "Les demandes de votre groupe (ouvertes, en retard, closes depuis 30 jours), ses "
        "statistiques (part résolue en moins de 7 jours, graphique), ses agents et l'export "
        "CSV de ses demandes (métadonnées, aucune donnée personnelle).",
        section=SECTION,
    )
)
async def _mongroupe(ctx: GroupCtx, args: Args, flags: Flags) -> Reply:
    group, now = ctx.group, ctx.now
    demandes = list(await ctx.ops.demandes(group))
    open_ = [d for d in demandes if d.status is not Status.CLOTUREE]
    late = [d for d in open_ if d.late]
    since = now - timedelta(days=RECENT_DAYS)
    closed = [
        d
        for d in demandes
        if d.status is Status.CLOTUREE and d.times.closed_at and d.times.closed_at >= since
    ]
    headers = ("Demande", "Territoire", "Statut", "Ouverte le", "Dernière réponse")
    parts = []
    for title, items, heads, is_closed in (
        (f"Demandes ouvertes ({len(open_)})", open_, headers, False),
        (f"Dont en retard ({len(late)})", late, headers, False),
        (
            f"Closes depuis {RECENT_DAYS} jours ({len(closed)})",
            closed,
            (*headers[:4], "Close le"),
            True,
        ),
    ):
        parts.append(render_table(heads, _rows(items, closed=is_closed), title=title))
    stats = compute(demandes, DemandeFilter(), now)
    parts.append(render_table(("Indicateur", "Valeur"), stats_rows(stats), title="Statistiques"))
    agents = await ctx.ops.agents(group)
    parts.append(
        render_table(
            ("N°", "Nom", "Rôles", "Contact"),
            [
                [
                    str(a.id),
                    a.display_name,
                    ", ".join(sorted(r.value for r in a.roles)),
                    "Matrix" if a.matrix_id else "courriel",
                ]
                for a in agents
            ],
            title=f"Agents actifs ({len(agents)})",
        )
    )
    stamp = now.astimezone(PARIS).strftime("%Y%m%d-%H%M")
    await ctx.ops.exported(group, len(demandes), actor=ctx.actor)
    text = f"Groupe « {group.name} »\n\n" + "\n\n".join(t for t, _ in parts)
    markup = f"<p>Groupe « {html.escape(group.name)} »</p>" + "".join(h for _, h in parts)
    return Reply(
        text,
        markup,
        attachments=(
            Attachment(f"groupe-stats-{stamp}.png", "image/png", ctx.ops.chart(stats, group.name)),
            Attachment(f"groupe-demandes-{stamp}.csv", "text/csv", export_csv(demandes)),
        ),
    )


@GROUP.command(
    CommandSpec(
        "agent-ajouter",
        (
            Arg("prenom", "text", "Prénom."),
            Arg("nom", "text", "Nom."),
            Arg("roles", "text", "Rôles séparés par des virgules : instructeur,responsable"),
            Arg("contact", "text", "Identifiant Matrix (@nom:serveur) ou adresse e-mail."),
            Arg("contact2", "text", "L'autre des deux, s'il y en a.", optional=True),
        ),
        "Ajouter un agent à votre groupe : il rejoint les demandes ouvertes du groupe et "
        "reçoit un message de bienvenue.",
        section=SECTION,
    )
)
async def _agent_ajouter(ctx: GroupCtx, args: Args, flags: Flags) -> Reply:
    try:
        roles = parse_roles(args["roles"], ctx.allowed_roles)
        matrix_id, email = parse_contacts(
            [args["contact"], args["contact2"]], ctx.ops.homeserver_allowed
        )
    except ValueError as exc:
        return Reply.error(str(exc))
    added = await ctx.ops.add_agent(
        ctx.group,
        first_name=str(args["prenom"]).strip(),
        last_name=str(args["nom"]).strip(),
        roles=roles,
        matrix_id=matrix_id,
        email=email,
        actor=ctx.actor,
    )
    if isinstance(added, str):
        return Reply.error(added)
    return Reply(
        f"Agent n° {added.id} ajouté à votre groupe « {ctx.group.name} » : {added.display_name}."
    )


@GROUP.destructive(
    CommandSpec(
        "agent-desactiver",
        (Arg("agent", "text", "L'agent : identifiant Matrix, adresse e-mail ou n°."),),
        "Désactiver un agent de votre groupe : il quitte toutes ses demandes et ses adresses "
        "de réponse par courriel sont révoquées.",
        destructive=True,
        section=SECTION,
    )
)
async def _agent_desactiver(ctx: GroupCtx, args: Args, flags: Flags, *, dry_run: bool) -> Reply:
    agent = await ctx.ops.find_agent(args["agent"])
    if agent is None or agent.group_id != ctx.group.id:
        return Reply.error(
            f"« {args['agent']} » n'est pas un agent de votre groupe (voir !mongroupe)."
        )
    if agent.id == ctx.responsable.id:
        return Reply.error("Vous ne pouvez pas vous désactiver vous-même.")
    if agent.has(Role.OPERATEUR):
        return Reply.error("Un opérateur du service ne se désactive que par les opérateurs.")
    if not agent.active:
        return Reply.error(f"{agent.display_name} est déjà désactivé.")
    if dry_run:
        refs = list(await ctx.ops.departures(agent))
        return Reply(
            f"Désactivation de {agent.display_name} (n° {agent.id}) : il sera retiré de "
            f"{len(refs)} demande(s) ({', '.join(refs) or 'aucune'}) et ses adresses de "
            "réponse par courriel seront révoquées."
        )
    left = await ctx.ops.deactivate(agent, actor=ctx.actor)
    return Reply(
        f"{agent.display_name} est désactivé et a quitté {len(left)} demande(s) : "
        + (", ".join(left) or "aucune")
        + "."
    )
