"""Statistics: the table with its chart, and the CSV export of metadata."""

from __future__ import annotations

from bot.commands.admin.context import (
    ADMIN,
    FILTERS_HELP,
    SECTION_STATS,
    AdminCtx,
    Args,
    Flags,
    demande_filter,
)
from bot.commands.framework import Arg, Attachment, CommandSpec, Reply, render_table
from bot.domain.calendar import PARIS
from bot.domain.stats import FilterError, compute, export_csv, select, stats_rows


@ADMIN.command(
    CommandSpec(
        "stats",
        (Arg("filtres", "rest", FILTERS_HELP, optional=True),),
        "Statistiques (ouvertes, clôturées, résolues en moins de 7 jours, délais médians, "
        "utilité, retards) : un tableau et un graphique.",
        section=SECTION_STATS,
    )
)
async def _stats(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        f = demande_filter(ctx, args["filtres"])
    except FilterError as exc:
        return Reply.error(str(exc))
    now = ctx.clock.now()
    async with ctx.store.transaction() as tx:
        demandes = await ctx.collect_stats(tx, now, ctx.rules)
    stats = compute(demandes, f, now)
    title = f"Statistiques — {f.describe()}"
    text, markup = render_table(("Indicateur", "Valeur"), stats_rows(stats), title=title)
    png = ctx.render_chart(stats, title)
    stamp = now.astimezone(PARIS).strftime("%Y%m%d-%H%M")
    return Reply(text, markup, attachments=(Attachment(f"stats-{stamp}.png", "image/png", png),))


@ADMIN.command(
    CommandSpec(
        "export",
        (Arg("filtres", "rest", FILTERS_HELP, optional=True),),
        "Export CSV des métadonnées des demandes (colonnes Administration+, aucune donnée "
        "personnelle).",
        section=SECTION_STATS,
    )
)
async def _export(ctx: AdminCtx, args: Args, flags: Flags) -> Reply:
    try:
        f = demande_filter(ctx, args["filtres"])
    except FilterError as exc:
        return Reply.error(str(exc))
    now = ctx.clock.now()
    async with ctx.store.transaction() as tx:
        found = select(await ctx.collect_stats(tx, now, ctx.rules), f)
        await tx.audit(
            "demandes_exported", actor=ctx.sender, details={"count": len(found)}, now=now
        )
    stamp = now.astimezone(PARIS).strftime("%Y%m%d-%H%M")
    data = export_csv(found)
    return Reply(
        f"Export de {len(found)} demande(s) — {f.describe()}.",
        attachments=(Attachment(f"demandes-{stamp}.csv", "text/csv", data),),
    )
