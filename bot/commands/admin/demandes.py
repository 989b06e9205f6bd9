"""Demandes, metadata only: the list, one demande's timeline, its audit trail."""

from __future__ import annotations

from datetime import datetime

from bot.commands.admin.context import (
    ADMIN,
    FILTERS_HELP,
    SECTION_DEMANDES,
    AdminCtx,
    Args,
    Flags,
    demande_filter,
    fmt_moment,
    table,
)
from bot.commands.framework import Arg, CommandSpec, Listing, Reply, listing_reply, page_word
from bot.domain.stats import FilterError, select


@ADMIN.command(
    CommandSpec(
        "demandes",
        (Arg("filtres", "rest", FILTERS_HELP, optional=True),),
        "Lister les demandes (métadonnées seulement), avec des filtres ; une longue liste "
        "s'affiche par pages (page=N), complète en fichier CSV.",
        section=SECTION_DEMANDES,
    )
)
async def _demandes(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        filters, page = page_word(args["filtres"])
        f = demande_filter(ctx, filters)
    except (FilterError, ValueError) as exc:
        return Reply.error(str(exc))
    async with ctx.store.transaction() as tx:
        found = select(await ctx.collect_stats(tx, ctx.clock.now(), ctx.rules), f)
    rows = [
        [
            d.reference,
            d.territoire,
            ", ".join(d.organisations),
            d.status.label,
            fmt_moment(d.times.created_at),
            "oui" if d.late else "",
        ]
        for d in found
    ]
    command = f"!demandes {filters}".strip().replace("{", "{{").replace("}", "}}")
    listing = Listing(
        title=f"Demandes — {f.describe()} : {len(found)}",
        headers=("Référence", "Territoire", "Organisations", "Statut", "Ouverte le", "Retard"),
        rows=rows,
        command=command + " page={page}",
        filename="demandes.csv",
    )
    return listing_reply(listing, page)


@ADMIN.command(
    CommandSpec(
        "demande",
        (Arg("reference", "text", "La référence, ex. A-2026-000123."),),
        "Chronologie d'une demande : ouverture, invitations, statuts, participants.",
        section=SECTION_DEMANDES,
    )
)
async def _demande(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    reference = str(args["reference"]).strip().upper()
    async with ctx.store.transaction() as tx:
        d = await tx.get_demande_by_reference(reference)
        if d is None:
            return Reply.error(f"Demande {reference} introuvable.")
        events: list[tuple[datetime, str]] = [(d.times.created_at, "ouverture")]
        participants = []
        for p in await tx.participants(d.id, active_only=False):
            agent = await tx.get_agent(p.agent_id)
            name = agent.display_name if agent else f"agent n° {p.agent_id}"
            participants.append(
                f"{name} ({p.kind}{', par courriel' if p.matrix_id is None else ''}"
                f"{', retiré' if not p.active else ''})"
            )
        for entry in await tx.audit_entries(reference=reference):
            if entry.action.startswith("status_") or entry.action in (
                "participant_added",
                "participant_removed",
                "joined",
                "left",
                "intruder_kicked",
                "intruder_banned",
                "late_reminded",
                "usager_data_wiped",
                "room_purged",
            ):
                who = entry.actor
                label = entry.action.replace("_", " ")
                if "agent" in entry.details:
                    agent = await tx.get_agent(int(entry.details["agent"]))
                    label += f" : {agent.display_name if agent else entry.details['agent']}"
                events.append((entry.at, f"{label} (par {who})"))
    events.sort(key=lambda e: e[0])
    lines = [
        f"Demande {d.reference} — {d.status.label}, territoire {d.territoire}, "
        f"organisations {', '.join(d.organisations)}",
        "",
        "Chronologie :",
        *(f"  {fmt_moment(at)} — {what}" for at, what in events),
        "",
        "Participants : " + ("; ".join(participants) or "aucun"),
    ]
    return Reply("\n".join(lines))


@ADMIN.command(
    CommandSpec(
        "audit",
        (Arg("reference", "text", "La référence d'une demande."),),
        "Le journal d'audit d'une demande.",
        section=SECTION_DEMANDES,
    )
)
async def _audit(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    reference = str(args["reference"]).strip().upper()
    async with ctx.store.transaction() as tx:
        entries = await tx.audit_entries(reference=reference)
    rows = [
        [
            fmt_moment(e.at),
            e.actor,
            e.action,
            ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()) if k != "mxc"),
        ]
        for e in entries
    ]
    return table(f"Audit de {reference} ({len(rows)})", ("Quand", "Qui", "Action", "Détails"), rows)
